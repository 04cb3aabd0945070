"""sightwise.data"""
