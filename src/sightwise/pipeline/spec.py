"""PIPELINE.toml: read, check every key, resolve paths, into one frozen `PipelineSpec`.

The minimal file (the Contract) names the data, the training options, one gate and the
model name; every other section is optional. Relative paths resolve against the TOML
file's folder. Anything unreadable, unknown, mistyped or missing is one `SpecError` line
naming the file, the section and the key (the CLI exits 2 on it).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType

from sightwise.config import TrainConfig, parse_duration
from sightwise.core import validate_name
from sightwise.errors import SightwiseError

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

DEFAULT_WORK = ".sightwise-pipeline"  # WORK = <TOML folder>/.sightwise-pipeline/<name>
# TrainConfig fields the pipeline sets itself (the run folder, its manifest, the flags).
_TRAIN_FIXED = {"data", "out", "overwrite", "allow_outside", "progress", "budget_s", "labels"}
NUMBER = (int, float)


class SpecError(SightwiseError):
    """PIPELINE.toml cannot be used as written (the message names file, section and key)."""


def _fraction(v) -> bool:
    return isinstance(v, NUMBER) and not isinstance(v, bool) and 0.0 <= v <= 1.0


def _non_negative(v) -> bool:
    return isinstance(v, NUMBER) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _positive(v) -> bool:
    return _non_negative(v) and v > 0


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _recall_floors(v) -> bool:
    return _fraction(v) or (isinstance(v, dict) and bool(v) and all(
        isinstance(k, str) and _fraction(x) for k, x in v.items()))


# key -> (check, what a good value looks like)
GATES = {
    "min_accuracy": (_fraction, "a number in [0, 1]"),
    "min_macro_f1": (_fraction, "a number in [0, 1]"),
    "min_recall": (_recall_floors, "a number in [0, 1], or a table of class = number"),
    "max_regression": (_non_negative, "a non-negative number (absolute drop)"),
    "max_relative_regression": (_non_negative, "a non-negative number (drop / production's)"),
    "regression_metric": (lambda v: v in ("macro_f1", "accuracy"), '"macro_f1" or "accuracy"'),
    "max_ece": (_fraction, "a number in [0, 1]"),
    "max_latency_p95_ms": (_positive, "a positive number of milliseconds"),
    "max_model_mb": (_positive, "a positive number of megabytes"),
    "max_label_free_drop": (_non_negative, "a non-negative number"),
    "max_label_error_share": (_fraction, "a number in [0, 1]"),
    "max_leakage": (_count, "a whole number >= 0"),
    "max_label_conflicts": (_count, "a whole number >= 0"),
    "max_bad_file_share": (_fraction, "a number in [0, 1]"),
}
GATE_DEFAULTS = {"max_regression": 0.01, "regression_metric": "macro_f1",
                 "max_label_free_drop": 0.0, "max_leakage": 0}
DATA = {
    "path": (lambda v: isinstance(v, str) and v.strip() != "", "a path"),
    "labels": (lambda v: isinstance(v, str) and v.strip() != "", "a path to a labels CSV"),
    "split": (lambda v: v in ("hash", "seed"), '"hash" or "seed"'),
    "class_from": (lambda v: v in ("top", "leaf"), '"top" or "leaf"'),
    "allow_outside": (lambda v: isinstance(v, bool), "true or false"),
}
EXPORT = {"int8": (lambda v: isinstance(v, bool), "true or false"),
          "opset": (lambda v: _count(v) and 11 <= v <= 21, "a whole number from 11 to 21")}
SHADOW = {"min_records": (lambda v: _count(v) and v >= 1, "a whole number >= 1"),
          "min_agreement": (_fraction, "a number in [0, 1]"),
          "max_labelled_drop": (_non_negative, "a non-negative number")}
SECTIONS = ("data", "train", "export", "gates", "register", "shadow", "monitor", "pipeline")


@dataclass(frozen=True)
class PipelineSpec:
    toml: Path
    root: Path  # the TOML's folder: relative paths resolve here
    data: Path
    labels: Path | None
    split: str
    class_from: str
    allow_outside: bool
    train: MappingProxyType  # TrainConfig keyword arguments (budget already in seconds)
    export: MappingProxyType
    gates: MappingProxyType
    name: str
    work: Path
    shadow: MappingProxyType | None = None
    monitor_log: Path | None = None
    monitor_window: int = 100  # the server's --window: predictions per monitored window
    raw: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    def train_config(self, manifest: Path, out: Path, *, progress: bool) -> TrainConfig:
        return TrainConfig(data=str(manifest), out=str(out), allow_outside=True,
                           overwrite=False, progress=progress, **self.train)

    def describe(self) -> dict:
        """The resolved spec as plain JSON (logged with the MLflow run)."""
        return {"toml": str(self.toml), "data": str(self.data),
                "labels": str(self.labels) if self.labels else None, "split": self.split,
                "train": dict(self.train), "export": dict(self.export),
                "gates": dict(self.gates), "name": self.name, "work": str(self.work),
                "shadow": dict(self.shadow) if self.shadow else None,
                "monitor_log": str(self.monitor_log) if self.monitor_log else None,
                "monitor_window": self.monitor_window}


def load_spec(path: str | Path, *, work: str | Path | None = None) -> PipelineSpec:
    """Read and check PIPELINE.toml; `work` overrides [pipeline] work."""
    toml = Path(path)
    if tomllib is None:
        raise SpecError("reading PIPELINE.toml needs Python 3.11+ or `pip install tomli`")
    if not toml.is_file():
        raise SpecError(f"{toml}: no such pipeline file")
    try:
        doc = tomllib.loads(toml.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{toml}: not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{toml}: unreadable ({exc})") from None
    return parse_spec(doc, toml, work=work)


def parse_spec(doc: dict, toml: Path, *, work: str | Path | None = None) -> PipelineSpec:
    toml = toml.absolute()
    root = toml.parent

    def bad(msg: str) -> SpecError:
        return SpecError(f"{toml.name}: {msg}")

    _known(doc, SECTIONS, "", bad)
    for name in SECTIONS:
        if name in doc and not isinstance(doc[name], dict):
            raise bad(f"[{name}] must be a table")
    for name in ("data", "train", "register"):
        if name not in doc:
            raise bad(f"missing [{name}] section")
    data = _checked(doc["data"], DATA, "data", bad)
    if "path" not in data:
        raise bad("[data] path: missing (the images `sightwise train` would read)")
    data_path = _resolve(root, data["path"])
    if not data_path.exists():
        raise bad(f"[data] path: dataset not found: {data_path}")
    reg = doc["register"]
    _known(reg, ("name",), "register", bad)
    try:
        name = validate_name(reg.get("name"))
    except SightwiseError as exc:
        raise bad(f"[register] name: {exc}") from None
    gates = {**GATE_DEFAULTS, **_checked(doc.get("gates", {}), GATES, "gates", bad)}
    shadow = _checked(doc["shadow"], SHADOW, "shadow", bad) if "shadow" in doc else None
    if shadow is not None and "min_records" not in shadow:
        raise bad("[shadow] min_records: missing (how many shadow predictions to require)")
    monitor = doc.get("monitor", {})
    _known(monitor, ("log", "window"), "monitor", bad)
    window = monitor.get("window", 100)
    if not isinstance(window, int) or isinstance(window, bool) or window < 2:
        raise bad(f"[monitor] window: a whole number of predictions >= 2, got {window!r}")
    pipe = doc.get("pipeline", {})
    _known(pipe, ("work",), "pipeline", bad)
    labels = data.get("labels")
    return PipelineSpec(
        toml=toml, root=root, data=data_path,
        labels=_resolve(root, labels) if labels else None,
        split=data.get("split", "hash"), class_from=data.get("class_from", "top"),
        allow_outside=bool(data.get("allow_outside", False)),
        train=MappingProxyType(_train(doc["train"], bad)),
        export=MappingProxyType({"int8": False, "opset": 17,
                                 **_checked(doc.get("export", {}), EXPORT, "export", bad)}),
        gates=MappingProxyType(gates), name=name,
        work=_resolve(root, str(work)) if work is not None else (
            _resolve(root, pipe["work"]) if "work" in pipe else root / DEFAULT_WORK / name),
        shadow=MappingProxyType(shadow) if shadow is not None else None,
        monitor_log=_resolve(root, monitor["log"]) if monitor.get("log") else None,
        monitor_window=window,
        raw=MappingProxyType(doc))


def _resolve(root: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else (root / p)


def _known(table: dict, allowed, section: str, bad) -> None:
    where = f"[{section}] " if section else ""
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(allowed)})"
            raise bad(f"{where}unknown key {key!r}{hint}")


def _checked(table: dict, rules: dict, section: str, bad) -> dict:
    _known(table, rules, section, bad)
    for key, value in table.items():
        ok, want = rules[key]
        if not ok(value):
            raise bad(f"[{section}] {key} = {value!r}: expected {want}")
    return dict(table)


_TYPES = {"str": str, "int": int, "float": NUMBER, "bool": bool}


def _train(table: dict, bad) -> dict:
    """[train] keys are TrainConfig's (budget as "3m"); checked by building one."""
    kinds = {f.name: str(f.type) for f in fields(TrainConfig) if f.name not in _TRAIN_FIXED}
    _known(table, [*kinds, "budget"], "train", bad)
    out = {}
    for key, value in table.items():
        if key == "budget":
            try:
                out["budget_s"] = parse_duration(str(value))
            except ValueError as exc:
                raise bad(f"[train] budget = {value!r}: {exc}") from None
            continue
        base = kinds[key].split("|")[0].strip()
        want = _TYPES.get(base, object)
        if isinstance(value, bool) != (base == "bool") or not isinstance(value, want):
            raise bad(f"[train] {key} = {value!r}: expected {base}")
        out[key] = float(value) if base == "float" else value
    try:
        TrainConfig(data="-", out="-", **out)
    except (TypeError, ValueError) as exc:
        raise bad(f"[train] {exc}") from None
    return out
