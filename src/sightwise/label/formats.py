"""Label Studio task JSON and CVAT for images 1.1 XML: read and write image-level labels.

Label Studio (labelstud.io/guide/tasks, /guide/predictions): a JSON list of tasks,
``{"data": {"image": REF}, "annotations": [{"result": [{"type": "choices", "from_name",
"to_name", "value": {"choices": [LABEL]}}], "was_cancelled": bool, ...}], "predictions":
[{"model_version", "score", "result": [...]}]}``. We write `predictions` so our model
pre-annotates in Label Studio; we read the `choices` results (other result types, such as
boxes, are not image labels and are ignored) and a cancelled annotation as a skip.

CVAT for images 1.1 (docs.cvat.ai, "XML annotation format"): ``<annotations><version>1.1
</version><meta><task>...<labels><label><name>..`` then ``<image id name width height><tag
label=".." source="manual|auto"/></image>``. Manual tags are labels; auto tags (automatic
annotation) are read as the model's suggestion. Other shapes are ignored.

Image references are matched to the pool (pool.py): exact relative path, then the longest
pool path the reference ends with, then a unique file name (Label Studio's uploads prefix
names with 8 hex digits and '-'). A reference that leaves the pool is refused by name.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlparse

from sightwise.errors import SightwiseError
from sightwise.label.pool import Pool, PoolError
from sightwise.label.store import SKIP

LS_FROM, LS_TO = "choice", "image"
LS_PREFIX = "/data/local-files/?d="  # Label Studio's local-files storage URL
_UPLOAD_NAME = re.compile(r"^[0-9a-f]{8}-(.+)$")


class FormatError(SightwiseError):
    """A file in a labelling format that cannot be imported as given."""


@dataclass(frozen=True)
class Record:
    """One image with its label (None: unlabelled; SKIP: skipped) and optional prediction."""

    path: Path
    label: str | None = None
    annotator: str = ""
    time: str = ""
    model_version: str = ""
    suggested: str = ""
    suggested_p: float | None = None


# -- matching references to the pool ---------------------------------------------------------


def reference_path(ref: str) -> str:
    """The file path inside a Label Studio / CVAT image reference.

    >>> reference_path("/data/local-files/?d=steel/crazing_1.jpg")
    'steel/crazing_1.jpg'
    >>> reference_path("/data/upload/3/05ed70cf-crazing_1.jpg")
    '/data/upload/3/05ed70cf-crazing_1.jpg'
    """
    ref = str(ref).strip()
    parsed = urlparse(ref)
    if "d" in parse_qs(parsed.query):
        return unquote(parse_qs(parsed.query)["d"][0])
    if parsed.scheme in ("http", "https", "s3", "gs"):
        return unquote(parsed.path)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return unquote(ref)


class PoolMatcher:
    def __init__(self, pool: Pool):
        self.pool = pool
        self.by_rel = {it.rel: it for it in pool.items}
        self.by_name: dict[str, list] = {}
        for it in pool.items:
            self.by_name.setdefault(it.path.name, []).append(it)

    def find(self, ref: str, where: str) -> Path:
        raw = reference_path(ref)
        p = PurePosixPath(raw.replace("\\", "/"))
        if ".." in p.parts:
            target = (self.pool.root / Path(*p.parts)).resolve()
            return self.pool.items[self.pool.index_of(target)].path  # PoolError names it
        if Path(raw).is_absolute():
            try:
                return self.pool.items[self.pool.index_of(raw)].path
            except PoolError:
                pass
        rel = p.as_posix().lstrip("/")
        if rel in self.by_rel:
            return self.by_rel[rel].path
        parts = PurePosixPath(rel).parts
        for k in range(1, len(parts)):
            tail = "/".join(parts[k:])
            if tail in self.by_rel:
                return self.by_rel[tail].path
        name = parts[-1] if parts else ""
        m = _UPLOAD_NAME.match(name)
        for candidate in (name, m.group(1) if m else None):
            hits = self.by_name.get(candidate or "", [])
            if len(hits) == 1:
                return hits[0].path
            if len(hits) > 1:
                raise FormatError(f"{where}: image {ref!r} matches {len(hits)} files named "
                                  f"{candidate!r} in the pool; use paths relative to the pool")
        raise PoolError(f"{where}: image {ref!r} is not in the pool ({self.pool.root})")


def _check_label(label: str, classes: list[str] | None, where: str) -> str:
    if classes is not None and label not in classes:
        raise FormatError(f"{where}: unknown class {label!r}; classes: {', '.join(classes)}")
    return label


# -- Label Studio ------------------------------------------------------------------------------


def _choice(result: list, where: str) -> str | None:
    labels = [c for r in result or [] if isinstance(r, dict) and r.get("type") == "choices"
              for c in (r.get("value") or {}).get("choices", [])]
    if len(labels) > 1:
        raise FormatError(f"{where}: {len(labels)} choices {labels}; one class per image is expected")
    return str(labels[0]) if labels else None


def read_label_studio(path: str | Path, pool: Pool, classes: list[str] | None = None) -> list[Record]:
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a Label Studio JSON file ({exc})") from None
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise FormatError(f"{path}: expected a JSON list of tasks")
    match, out = PoolMatcher(pool), []
    for n, task in enumerate(tasks, start=1):
        where = f"{Path(path).name}: task {task.get('id', n) if isinstance(task, dict) else n}"
        data = task.get("data") if isinstance(task, dict) else None
        ref = next((v for k, v in (data or {}).items() if k in ("image", "img", "url")), None) \
            if isinstance(data, dict) else None
        if not isinstance(ref, str):
            raise FormatError(f"{where}: no data.image reference")
        image = match.find(ref, where)
        pred = _ls_prediction(task.get("predictions") or [], classes, where)
        for ann in task.get("annotations") or []:
            if not isinstance(ann, dict):
                continue
            label = SKIP if ann.get("was_cancelled") else _choice(ann.get("result"), where)
            if label is None:
                continue
            if label != SKIP:
                _check_label(label, classes, where)
            who = ann.get("completed_by")
            who = who.get("email") or who.get("id") if isinstance(who, dict) else who
            out.append(Record(image, label, f"label-studio:{who}" if who not in (None, "") else
                              "label-studio", str(ann.get("created_at") or ""), *pred))
        if not task.get("annotations") and pred[0]:
            out.append(Record(image, None, "", "", *pred))
    return out


def _ls_prediction(preds: list, classes, where: str) -> tuple[str, str, float | None]:
    for p in preds:
        if isinstance(p, dict):
            label = _choice(p.get("result"), where)
            if label is not None:
                _check_label(label, classes, where)
                score = p.get("score")
                return (str(p.get("model_version") or ""), label,
                        float(score) if isinstance(score, int | float) else None)
    return "", "", None


def label_studio_tasks(records: list[Record], image_ref) -> list[dict]:
    """Tasks for Label Studio; `image_ref(path) -> str` makes each data.image."""
    tasks = []
    for n, r in enumerate(records, start=1):
        task: dict = {"id": n, "data": {"image": image_ref(r.path)}, "annotations": [],
                      "predictions": []}
        if r.label is not None:
            cancelled = r.label == SKIP
            result = [] if cancelled else [{"id": f"a{n}", "type": "choices", "from_name": LS_FROM,
                                            "to_name": LS_TO, "origin": "manual",
                                            "value": {"choices": [r.label]}}]
            task["annotations"].append({"result": result, "was_cancelled": cancelled,
                                        "ground_truth": False, "created_at": r.time or None})
            if r.annotator:
                task["meta"] = {"annotator": r.annotator}
        if r.suggested:
            task["predictions"].append({
                "model_version": r.model_version, "score": r.suggested_p,
                "result": [{"id": f"p{n}", "type": "choices", "from_name": LS_FROM,
                            "to_name": LS_TO, "value": {"choices": [r.suggested]}}]})
        tasks.append(task)
    return tasks


def label_studio_config(classes: list[str]) -> str:
    """The labelling config those tasks fit (paste it into the Label Studio project)."""
    from xml.sax.saxutils import quoteattr

    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="{LS_TO}" value="$image"/>\n  <Choices name="{LS_FROM}" '
            f'toName="{LS_TO}" choice="single" showInLine="true">\n{choices}\n  </Choices>\n</View>\n')


# -- CVAT for images 1.1 -----------------------------------------------------------------------


def _parse_xml(path: Path) -> ET.Element:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read ({exc})") from None
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        # CVAT never writes them; refusing them closes entity-expansion tricks for good.
        raise FormatError(f"{path}: DOCTYPE/ENTITY declarations are not accepted")
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise FormatError(f"{path}: not well-formed XML ({exc})") from None


def read_cvat(path: str | Path, pool: Pool, classes: list[str] | None = None) -> list[Record]:
    path = Path(path)
    root = _parse_xml(path)
    if root.tag != "annotations":
        raise FormatError(f"{path}: not a CVAT annotations file (root <{root.tag}>)")
    declared = [e.text.strip() for e in root.iterfind("./meta/task/labels/label/name")
                if e.text] or [e.text.strip() for e in root.iterfind("./meta/project/labels/label/name")
                               if e.text]
    allowed = classes if classes is not None else (declared or None)
    match, out = PoolMatcher(pool), []
    for img in root.iterfind("image"):
        where = f"{path.name}: image id {img.get('id')}"
        name = img.get("name")
        if not name:
            raise FormatError(f"{where}: no name attribute")
        tags = img.findall("tag")
        manual = [t.get("label", "") for t in tags if t.get("source", "manual") != "auto"]
        auto = [t.get("label", "") for t in tags if t.get("source") == "auto"]
        if len(manual) > 1:
            raise FormatError(f"{where}: {len(manual)} tags {manual}; one class per image is expected")
        if not manual and not auto:
            continue
        image = match.find(name, where)
        label = _check_label(manual[0], allowed, where) if manual else None
        suggested = _check_label(auto[0], allowed, where) if auto else ""
        out.append(Record(image, label, "cvat" if label else "", "", "", suggested, None))
    return out


def cvat_xml(records: list[Record], classes: list[str], name_of, *, task_name: str = "sightwise",
             dumped: str = "") -> bytes:
    """CVAT for images 1.1 with one tag per labelled image (`name_of(path) -> str`)."""
    from PIL import Image

    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    for tag, text in (("name", task_name), ("size", str(len(records))), ("mode", "annotation"),
                      ("overlap", "0")):
        ET.SubElement(task, tag).text = text
    labels = ET.SubElement(task, "labels")
    for c in classes:
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = c
        ET.SubElement(lab, "type").text = "tag"
        ET.SubElement(lab, "attributes")
    ET.SubElement(root.find("meta"), "dumped").text = dumped
    for n, r in enumerate(records):
        try:
            with Image.open(r.path) as im:  # header only
                w, h = im.size
        except Exception:  # noqa: BLE001 - unreadable: CVAT accepts the image without sizes
            w = h = 0
        el = ET.SubElement(root, "image", {"id": str(n), "name": name_of(r.path),
                                           "width": str(w), "height": str(h)})
        if r.label is not None and r.label != SKIP:
            ET.SubElement(el, "tag", {"label": r.label, "source": "manual"})
        elif r.suggested:
            ET.SubElement(el, "tag", {"label": r.suggested, "source": "auto"})
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")
