"""sightwise.monitor: prediction log, reference statistics, drift tests, label-free
accuracy, alerts (torch-free).
"""
