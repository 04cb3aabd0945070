"""Turn a model reference into a verified bundle folder.

``NAME@ALIAS`` (``defects@production``), ``NAME/VERSION`` (``defects/3``) or a bundle path
(a run folder holding ``bundle/`` works too). An existing folder always wins, so a plain
path never touches MLflow. Registry references are checked for traversal before anything
is opened and every resolved bundle is verified with `load_bundle` (sha256 of each file,
no pickles, nothing pointing outside its folder).
"""

from __future__ import annotations

import re
from pathlib import Path

from sightwise.bundle import load_bundle
from sightwise.registry.store import (
    RegistryError,
    check_reference_text,
    mlflow_client,
    mlflow_error_code,
    validate_alias,
    validate_name,
    version_dir,
)

_ALIAS_REF = re.compile(r"(?P<name>[^@]+)@(?P<alias>[^@]+)")
_VERSION_REF = re.compile(r"(?P<name>.+)/(?P<version>\d+)")


def parse_ref(ref: str) -> tuple[str, str | None, int | None] | None:
    """(name, alias, version) of a registry reference, None when it has neither form.

    >>> parse_ref("defects@production"), parse_ref("defects/3"), parse_ref("runs/a/bundle")
    (('defects', 'production', None), ('defects', None, 3), None)
    """
    text = check_reference_text(str(ref))
    m = _ALIAS_REF.fullmatch(text)
    if m:
        return validate_name(m["name"]), validate_alias(m["alias"]), None
    m = _VERSION_REF.fullmatch(text)
    if m:
        return validate_name(m["name"]), None, int(m["version"])
    return None


def resolve_bundle(ref: str | Path, *, allow_paths: bool = True) -> Path:
    """The verified bundle folder for a reference (raises BundleError / RegistryError).

    `allow_paths=False` accepts registry references only: for references that come from
    someone who may not name arbitrary folders (a request to the server).
    """
    text = check_reference_text(str(ref))
    path = Path(text)
    if allow_paths and path.is_dir():
        if not (path / "bundle.json").is_file() and (path / "bundle" / "bundle.json").is_file():
            path = path / "bundle"
        load_bundle(path)
        return path
    try:
        parsed = parse_ref(text)
    except RegistryError as exc:
        raise RegistryError(f"{text}: no such bundle folder, and refused as a registry "
                            f"reference: {exc}") from None
    if parsed is None:
        raise RegistryError(f"{text}: no such bundle folder, and not a registry reference "
                            "(NAME@ALIAS or NAME/VERSION)")
    name, alias, version = parsed
    client = mlflow_client()
    version = alias_version(client, name, alias) if alias else check_version(client, name, version)
    folder = version_dir(name, version)
    if not folder.is_dir():
        raise RegistryError(f"{name} v{version}: its bundle folder {folder} is missing")
    load_bundle(folder)
    return folder


def alias_version(client, name: str, alias: str) -> int:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except Exception as exc:
        code = mlflow_error_code(exc)
        if code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"no registered model named {name!r}") from None
        if code == "INVALID_PARAMETER_VALUE":
            raise RegistryError(f"no version of {name} holds the alias {alias!r}") from None
        raise


def check_version(client, name: str, version: int) -> int:
    try:
        client.get_model_version(name, str(version))
    except Exception as exc:
        if mlflow_error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"{name}/{version}: no such registered model version") from None
        raise
    return version


def current_version(name: str, alias: str = "production") -> tuple[int, Path] | None:
    """(version, folder) holding NAME@ALIAS, or None. One indexed MLflow query on a cached
    client (a few ms), cheap enough to poll every second; the files are not verified here
    (verify with `resolve_bundle` or `load_bundle` when the version changes)."""
    validate_name(name)
    validate_alias(alias)
    try:
        mv = mlflow_client().get_model_version_by_alias(name, alias)
    except Exception as exc:
        if mlflow_error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return int(mv.version), version_dir(name, int(mv.version))
