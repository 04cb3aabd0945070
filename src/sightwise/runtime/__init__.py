"""sightwise.runtime"""
