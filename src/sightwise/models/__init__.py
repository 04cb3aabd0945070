"""sightwise.models"""
