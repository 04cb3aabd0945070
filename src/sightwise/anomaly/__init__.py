"""sightwise.anomaly"""
