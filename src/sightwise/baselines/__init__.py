"""sightwise.baselines"""
