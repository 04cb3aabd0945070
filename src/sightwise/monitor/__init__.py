"""sightwise.monitor"""
