"""Command-line entry points of sightwise.pipeline, added to the main `sightwise` app by
`register(app)`. Imports only typer at module level; heavy imports happen inside commands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to the main app."""
