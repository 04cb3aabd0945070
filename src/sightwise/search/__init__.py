"""sightwise.search"""
