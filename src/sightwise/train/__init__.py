"""sightwise.train"""
