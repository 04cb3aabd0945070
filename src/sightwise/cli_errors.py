"""The one decorator every command-line entry uses: expected failures -> one line, exit 2.

It lives at the bottom layer (it needs only typer and sightwise.errors) so the sub-apps of
registry, search and anomaly use the same one as sightwise.cli instead of a copy each.
"""

from __future__ import annotations

import functools

import typer

from sightwise.errors import SightwiseError


def user_errors(fn):
    """Turn expected failures into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (SightwiseError, ValueError, KeyError, FileNotFoundError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(2) from None

    return wrapper
