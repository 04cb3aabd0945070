"""sightwise.export"""
