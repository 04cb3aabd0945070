"""sightwise.evaluate"""
