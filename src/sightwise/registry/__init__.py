"""sightwise.registry"""
