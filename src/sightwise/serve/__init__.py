"""sightwise.serve"""
