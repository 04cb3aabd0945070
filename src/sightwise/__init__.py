"""Sightwise: offline deep-learning image recognition.

Importing the package does no work: no model is built, no file is read (DESIGN.md).
"""

__version__ = "0.1.0"
