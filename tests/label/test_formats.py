"""Label Studio and CVAT: the formats' documented examples, round trips, bad input.

The examples are shaped after labelstud.io/guide/predictions ("Import bbox and choice
pre-annotations for images"), Label Studio's JSON export (tasks with `annotations`), and
docs.cvat.ai "XML annotation format" 1.1 (an <image> with a <tag>)."""

from __future__ import annotations

import json
import shutil

import pytest

from sightwise.label.exchange import export_labels, gather, import_labels
from sightwise.label.formats import (
    FormatError,
    Record,
    cvat_xml,
    label_studio_tasks,
    read_cvat,
    read_label_studio,
)
from sightwise.label.pool import PoolError, read_pool
from sightwise.label.store import SKIP, final_labels, read_answers

LS_PREDICTION_EXAMPLE = [{
    "data": {"image": "/static/samples/sample.jpg"},
    "predictions": [{
        "model_version": "one", "score": 0.5,
        "result": [
            {"id": "result1", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
             "original_width": 600, "original_height": 403, "image_rotation": 0,
             "value": {"rotation": 0, "x": 4.98, "y": 12.82, "width": 32.52, "height": 44.91,
                       "rectanglelabels": ["Airplane"]}},
            {"id": "result3", "type": "choices", "from_name": "choice", "to_name": "image",
             "value": {"choices": ["Airbus"]}},
        ]}],
}]

LS_EXPORT_EXAMPLE = [{
    "id": 1,
    "annotations": [{
        "id": 1, "completed_by": 1,
        "result": [{"value": {"choices": ["Boeing"]}, "id": "n2ldmNpSQI", "from_name": "choice",
                    "to_name": "image", "type": "choices", "origin": "manual"}],
        "was_cancelled": False, "ground_truth": False,
        "created_at": "2021-03-09T21:52:49.513742Z", "lead_time": 11.3, "task": 1}],
    "data": {"image": "/data/upload/1/05ed70cf-sample.jpg"},
    "predictions": [],
}, {
    "id": 2,
    "annotations": [{"id": 2, "completed_by": 1, "result": [], "was_cancelled": True}],
    "data": {"image": "/data/local-files/?d=photos/other.jpg"},
}]

# docs.cvat.ai's 1.1 example, cut to one image; its <labels> omit the tag's label
# "good_frame", which a real export declares, so it is added here.
CVAT_EXAMPLE = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>4</id><name>segmentation</name><size>2</size><mode>annotation</mode>
      <overlap>0</overlap><bugtracker></bugtracker><flipped>False</flipped>
      <labels>
        <label><name>car</name><attributes></attributes></label>
        <label><name>good_frame</name><attributes></attributes></label>
      </labels>
    </task>
    <dumped>2018-09-25 11:38:28.799808+03:00</dumped>
  </meta>
  <image id="0" name="filename000.jpg" width="1600" height="1200">
    <box label="car" xtl="797.33" ytl="870.92" xbr="965.52" ybr="928.94" occluded="0" z_order="4">
    </box>
    <tag label="good_frame" source="manual">
    </tag>
  </image>
  <image id="1" name="photos/other.jpg" width="24" height="24">
    <tag label="car" source="auto"></tag>
  </image>
</annotations>
"""


@pytest.fixture
def pool(pool_dir):
    (pool_dir / "photos").mkdir()
    shutil.copy(pool_dir / "red_000.png", pool_dir / "sample.jpg")
    shutil.copy(pool_dir / "red_001.png", pool_dir / "photos" / "other.jpg")
    shutil.copy(pool_dir / "red_002.png", pool_dir / "filename000.jpg")
    return read_pool(pool_dir)


def test_label_studio_documented_prediction_example(pool, tmp_path):
    f = tmp_path / "tasks.json"
    f.write_text(json.dumps(LS_PREDICTION_EXAMPLE))
    (rec,) = read_label_studio(f, pool, classes=["Boeing", "Airbus"])
    assert rec.path.name == "sample.jpg" and rec.label is None
    assert (rec.model_version, rec.suggested, rec.suggested_p) == ("one", "Airbus", 0.5)


def test_label_studio_export_example_gives_labels_and_skips(pool, tmp_path):
    f = tmp_path / "export.json"
    f.write_text(json.dumps(LS_EXPORT_EXAMPLE))
    a, b = read_label_studio(f, pool)
    assert (a.path.name, a.label, a.annotator) == ("sample.jpg", "Boeing", "label-studio:1")
    assert a.time == "2021-03-09T21:52:49.513742Z"
    assert (b.path.name, b.label) == ("other.jpg", SKIP)


def test_cvat_documented_example(pool, tmp_path):
    f = tmp_path / "annotations.xml"
    f.write_text(CVAT_EXAMPLE)
    a, b = read_cvat(f, pool)
    assert (a.path.name, a.label) == ("filename000.jpg", "good_frame")
    assert (b.path.name, b.label, b.suggested) == ("other.jpg", None, "car")


def records(pool):
    return [Record(pool.items[0].path, "red", "ann", "2024-01-01T00:00:00Z", "local-x", "red", 0.9),
            Record(pool.items[1].path, "blue", "bob", "2024-01-02T00:00:00Z"),
            Record(pool.items[2].path, None, "", "", "local-x", "green", 0.4),
            Record(pool.items[3].path, SKIP, "ann", "2024-01-03T00:00:00Z")]


def test_label_studio_round_trip(pool, tmp_path):
    recs = records(pool)
    f = tmp_path / "rt.json"
    f.write_text(json.dumps(label_studio_tasks(recs, lambda p: "/data/local-files/?d=" +
                                               p.relative_to(pool.root).as_posix())))
    back = read_label_studio(f, pool, ["red", "green", "blue"])
    assert [(r.path, r.label, r.model_version, r.suggested, r.suggested_p) for r in back] == [
        (r.path, r.label, r.model_version, r.suggested, r.suggested_p) for r in recs]


def test_cvat_round_trip(pool, tmp_path):
    recs = records(pool)
    f = tmp_path / "rt.xml"
    f.write_bytes(cvat_xml(recs, ["red", "green", "blue"],
                           lambda p: p.relative_to(pool.root).as_posix()))
    back = read_cvat(f, pool)
    assert [(r.path, r.label, r.suggested) for r in back] == [
        (recs[0].path, "red", ""), (recs[1].path, "blue", ""), (recs[2].path, None, "green")]


def test_import_appends_to_the_labels_file_then_exports_again(pool, pool_dir, tmp_path):
    f = tmp_path / "export.json"
    f.write_text(json.dumps(LS_EXPORT_EXAMPLE))
    out = tmp_path / "labels.csv"
    counts = import_labels(str(f), str(pool_dir), str(out))
    assert counts["labels"] == 1 and counts["skips"] == 1 and counts["rows_written"] == 2
    assert final_labels(read_answers(out)) == {"pool/sample.jpg": "Boeing"}
    recs, classes = gather(str(out))
    assert classes == ["Boeing"] and [r.path.name for r in recs] == ["sample.jpg"]
    manifest = export_labels(recs, classes, str(tmp_path / "m" / "train.csv"), "csv", log=print)
    assert manifest.read_text() == "path,label\n../pool/sample.jpg,Boeing\n"
    folder = export_labels(recs, classes, str(tmp_path / "byclass"), "folder", log=print)
    assert (folder / "Boeing" / "sample.jpg").read_bytes() == (pool_dir / "sample.jpg").read_bytes()


def test_an_unknown_class_stops_the_import_with_nothing_written(pool, pool_dir, tmp_path):
    f = tmp_path / "export.json"
    f.write_text(json.dumps(LS_EXPORT_EXAMPLE))
    out = tmp_path / "labels.csv"
    with pytest.raises(FormatError, match="task 1: unknown class 'Boeing'"):
        import_labels(str(f), str(pool_dir), str(out), classes=["Airbus", "Embraer"])
    assert not out.exists()
    xml = tmp_path / "a.xml"
    xml.write_text(CVAT_EXAMPLE.replace('label="good_frame"', 'label="bad_frame"'))
    with pytest.raises(FormatError, match="image id 0: unknown class 'bad_frame'"):
        read_cvat(xml, pool)


def test_an_image_outside_the_pool_is_refused(pool, tmp_path):
    bad = [{"data": {"image": "/data/local-files/?d=../../secret.png"},
            "annotations": [{"result": [{"type": "choices", "value": {"choices": ["red"]}}]}]}]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(PoolError, match="outside the pool"):
        read_label_studio(f, pool)
    bad[0]["data"]["image"] = "/data/upload/1/abcdef12-nowhere.png"
    f.write_text(json.dumps(bad))
    with pytest.raises(PoolError, match="task 1: image .*nowhere.png.* is not in the pool"):
        read_label_studio(f, pool)


def test_malformed_files_get_a_clear_error(pool, tmp_path):
    f = tmp_path / "two.json"
    f.write_text(json.dumps([{"data": {"image": "sample.jpg"}, "annotations": [{"result": [
        {"type": "choices", "value": {"choices": ["red", "blue"]}}]}]}]))
    with pytest.raises(FormatError, match="one class per image"):
        read_label_studio(f, pool)
    x = tmp_path / "bomb.xml"
    x.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><annotations/>')
    with pytest.raises(FormatError, match="DOCTYPE"):
        read_cvat(x, pool)
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(FormatError, match="not a Label Studio JSON"):
        read_label_studio(tmp_path / "junk.json", pool)


def test_cli_import_and_its_user_errors(pool, pool_dir, tmp_path):
    from typer.testing import CliRunner

    from sightwise.cli import app

    xml = tmp_path / "annotations.xml"
    xml.write_text(CVAT_EXAMPLE)
    out = tmp_path / "labels.csv"
    res = CliRunner().invoke(app, ["data", "import", str(xml), "--pool", str(pool_dir),
                                   "--out", str(out), "--classes", "car,bike"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: annotations.xml: image id 0: unknown class 'good_frame'; classes: car, bike"]
    assert not out.exists()
    res = CliRunner().invoke(app, ["data", "import", str(xml), "--pool", str(pool_dir),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["labels"] == 1
    assert final_labels(read_answers(out)) == {"pool/filename000.jpg": "good_frame"}
