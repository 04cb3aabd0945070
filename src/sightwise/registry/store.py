"""Where the registry lives and how it is opened: paths, names, the lock, the MLflow client.

One project directory holds everything: ``$SIGHTWISE_HOME`` (default ``~/.sightwise``) with
``mlflow.db`` (runs, model versions, aliases), ``artifacts/`` (what runs log), ``bundles/NAME/
<version>/`` (the immutable registered bundles) and ``history/NAME.jsonl`` (alias moves).
``MLFLOW_TRACKING_URI`` (and ``MLFLOW_REGISTRY_URI``) point MLflow elsewhere; bundles and
history stay under ``$SIGHTWISE_HOME``.

MLflow is imported lazily (about 2 s) and never at import time of this module.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

from sightwise import core
from sightwise.errors import SightwiseError

LOCK_TIMEOUT_S = 120.0


class RegistryError(SightwiseError):
    """A registry reference, name or operation cannot be honoured (message says why)."""


class PromotionRefused(RegistryError):
    """The promotion gate failed; the message names each failed check and by how much."""


def sightwise_home() -> Path:
    return Path(os.environ.get("SIGHTWISE_HOME") or "~/.sightwise").expanduser().absolute()


def default_tracking_uri() -> str:
    return f"sqlite:///{(sightwise_home() / 'mlflow.db').as_posix()}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def registry_uri() -> str:
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri()


def uses_default_store() -> bool:
    return tracking_uri() == default_tracking_uri()


def artifact_root() -> Path:
    return sightwise_home() / "artifacts"


def bundles_root() -> Path:
    return sightwise_home() / "bundles"


def validate_name(name: str) -> str:
    """The one grammar for model names (sightwise.core), as a RegistryError."""
    try:
        return core.validate_name(name)
    except core.ModelRefError as exc:
        raise RegistryError(str(exc)) from None


def validate_alias(alias: str) -> str:
    try:
        return core.validate_alias(alias)
    except core.ModelRefError as exc:
        raise RegistryError(str(exc)) from None


def validate_version(version) -> int:
    try:
        return core.validate_version(version)
    except core.ModelRefError as exc:
        raise RegistryError(str(exc)) from None


def check_reference_text(text: str) -> str:
    """Refuse NUL bytes and URL-encoded path characters (``%2e%2e%2f`` is ``../``)."""
    if "\x00" in text:
        raise RegistryError(f"reference {text!r} contains a NUL byte")
    decoded = text
    for _ in range(3):  # double encoding (%252e) decodes in two steps
        step = unquote(decoded)
        if step == decoded:
            break
        decoded = step
    if decoded != text and any(s in decoded for s in ("..", "/", "\\", "\x00")):
        raise RegistryError(f"reference {text!r} contains URL-encoded path characters "
                            f"({decoded!r}); refused")
    return text


def model_dir(name: str) -> Path:
    """bundles/NAME, refused when it is a symlink or resolves outside the store."""
    root = bundles_root()
    path = root / validate_name(name)
    _check_in_store(root, path)
    return path


def version_dir(name: str, version: int) -> Path:
    """bundles/NAME/<version>: must be a real folder inside the store (no symlinks)."""
    path = model_dir(name) / str(int(version))
    _check_in_store(bundles_root(), path)
    return path


def _check_in_store(root: Path, path: Path) -> None:
    if path.is_symlink():
        raise RegistryError(f"{path} is a symlink; the store holds only real folders")
    target, base = path.resolve(), root.resolve()
    if target != base and base not in target.parents:
        raise RegistryError(f"{path} resolves outside the store ({target})")


@contextmanager
def store_lock(name: str = ".lock", timeout: float = LOCK_TIMEOUT_S):
    """An exclusive lock on the store across processes. The kernel drops it when the
    holder dies (even by SIGKILL), so a killed writer never blocks the next one."""
    home = sightwise_home()
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                raise RegistryError(f"the model store {home} is busy (locked by another "
                                    f"process for over {timeout:.0f} s)")
            time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


# Sightwise is offline: MLflow 3.x starts a telemetry thread that fetches a config from the
# internet when `mlflow` is imported, unless disabled. And one request to an unreachable
# tracking server retries for minutes by default (7 retries, back-off factor 2): too long at
# the end of a training run or in a server's watcher. Variables the user set are kept.
MLFLOW_ENV_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def quiet_mlflow_env() -> None:
    for key, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def mlflow_client():
    """An MlflowClient for the current store, creating the default SQLite store first."""
    quiet_mlflow_env()
    if uses_default_store():
        ensure_default_store()
    return _client(tracking_uri(), registry_uri())


@functools.lru_cache(maxsize=8)
def _client(t_uri: str, r_uri: str):
    # Cached so current_version() can be polled every second without rebuilding the
    # SQLAlchemy engine (about 50 ms) each time.
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=t_uri, registry_uri=r_uri)


def ensure_default_store() -> None:
    """Create $SIGHTWISE_HOME/mlflow.db once, atomically: MLflow's schema migrations take
    seconds and a half-migrated database cannot be opened again, so they run on a temp
    file that is renamed into place only when complete."""
    home = sightwise_home()
    db = home / "mlflow.db"
    if db.exists():
        return
    artifact_root().mkdir(parents=True, exist_ok=True)
    with store_lock(".init.lock"):
        if db.exists():
            return
        for stale in home.glob(".mlflow.db.*.tmp*"):  # left by a killed creator
            stale.unlink(missing_ok=True)
        tmp = home / f".mlflow.db.{os.getpid()}.tmp"
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        level = logging.getLogger("mlflow").level
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial tables..."
        try:
            store = SqlAlchemyStore(f"sqlite:///{tmp.as_posix()}", artifact_root().as_uri())
            store.engine.dispose()
        finally:
            logging.getLogger("mlflow").setLevel(level)
        os.replace(tmp, db)


def current_user(with_host: bool = True) -> str:
    """user@host for the history of alias moves."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers); not worth failing for
        user = "unknown"
    return f"{user}@{socket.gethostname()}" if with_host else user


def mlflow_error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)
