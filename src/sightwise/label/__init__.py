"""sightwise.label: annotation page, active-learning order, data audit (label errors),
Label Studio / CVAT formats.
"""
