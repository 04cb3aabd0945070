"""Turn a model reference into a verified bundle.

``NAME@ALIAS`` (``defects@production``), ``NAME/VERSION`` (``defects/3``) or a bundle path
(a run folder holding ``bundle/`` works too). An existing folder always wins, so a plain
path never touches MLflow. Registry references follow the one grammar of
`sightwise.core` and are checked for traversal before anything is opened. Every resolved
bundle is verified with `load_bundle` (schema, digest, sha256 of each file, no pickles,
nothing pointing outside its folder); a registry version's bundle.json must also be
byte-identical to the one registered (its sha256 is an MLflow tag, outside the bundle).
"""

from __future__ import annotations

from pathlib import Path

from sightwise import core
from sightwise.bundle import Bundle, find_bundle_dir, load_bundle
from sightwise.errors import BundleError
from sightwise.registry.store import (
    RegistryError,
    check_reference_text,
    mlflow_client,
    mlflow_error_code,
    validate_alias,
    validate_name,
    version_dir,
)

SHA_TAG = "sightwise.bundle_sha256"


def parse_ref(ref: str) -> tuple[str, str | None, int | None] | None:
    """(name, alias, version) of a registry reference, None when it has neither shape.

    >>> parse_ref("defects@production"), parse_ref("defects/3"), parse_ref("runs/a/bundle")
    (('defects', 'production', None), ('defects', None, 3), None)
    """
    text = check_reference_text(str(ref))
    if not core.looks_like_model_ref(text):
        return None
    try:
        return core.parse_model_ref(text)
    except core.ModelRefError as exc:
        raise RegistryError(str(exc)) from None


def open_bundle(ref: str | Path, *, allow_paths: bool = True) -> Bundle:
    """The verified bundle for a reference (raises BundleError / RegistryError).

    `allow_paths=False` accepts registry references only: for references that come from
    someone who may not name arbitrary folders (a request to the server).
    """
    text = check_reference_text(str(ref))
    path = Path(text)
    if allow_paths and path.is_dir():
        return load_bundle(find_bundle_dir(path))
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
    return open_version(name, version, client=client)


def resolve_bundle(ref: str | Path, *, allow_paths: bool = True) -> Path:
    """The verified bundle folder for a reference (see `open_bundle`)."""
    return open_bundle(ref, allow_paths=allow_paths).path


def open_version(name: str, version: int, *, client=None) -> Bundle:
    """Registered version NAME/VERSION, verified against the bundle.json hash recorded at
    registration."""
    folder = version_dir(name, version)
    if not folder.is_dir():
        raise RegistryError(f"{name} v{version}: its bundle folder {folder} is missing")
    expected = registered_sha256(client or mlflow_client(), name, version)
    if expected is None:
        raise BundleError(f"{name} v{version}: no bundle.json hash was recorded at "
                          "registration; register the bundle again")
    return load_bundle(folder, expected_sha256=expected)


def registered_sha256(client, name: str, version: int) -> str | None:
    try:
        mv = client.get_model_version(name, str(int(version)))
    except Exception as exc:
        if mlflow_error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"{name}/{version}: no such registered model version") from None
        raise
    return (mv.tags or {}).get(SHA_TAG) or None


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
    (open the version with `open_version` when it changes)."""
    validate_name(name)
    validate_alias(alias)
    try:
        mv = mlflow_client().get_model_version_by_alias(name, alias)
    except Exception as exc:
        if mlflow_error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return int(mv.version), version_dir(name, int(mv.version))
