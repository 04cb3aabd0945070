"""The pool reader: a folder of images, or a queue folder with queue.jsonl / queue.csv."""

from __future__ import annotations

import json

import pytest

from sightwise.label.pool import Pool, PoolError, read_pool


def test_a_folder_is_every_image_below_it_in_path_order(pool_dir):
    (pool_dir / "sub").mkdir()
    (pool_dir / "sub" / "x.png").write_bytes((pool_dir / "red_000.png").read_bytes())
    (pool_dir / ".hidden.png").write_bytes(b"x")
    (pool_dir / "notes.txt").write_text("not an image")
    pool = read_pool(pool_dir)
    rels = [it.rel for it in pool.items]
    assert rels == sorted(rels) and "sub/x.png" in rels and len(rels) == 13
    assert pool.index_of("sub/x.png") == rels.index("sub/x.png")


def test_a_path_outside_the_pool_is_named_as_such(pool_dir, tmp_path):
    pool = read_pool(pool_dir)
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"x")
    with pytest.raises(PoolError, match="outside the pool"):
        pool.index_of(outside)
    with pytest.raises(PoolError, match="outside the pool"):
        pool.index_of("../elsewhere.png")
    with pytest.raises(PoolError, match="not in the pool"):
        pool.index_of("missing.png")


def write_queue(folder, records):
    (folder / "queue.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_queue_names_the_images_in_priority_order(pool_dir):
    write_queue(pool_dir, [
        {"path": "red_000.png", "priority": 0.2, "reason": "drift"},
        {"path": "blue_001.png", "priority": 0.9, "predicted": "blue", "probability": 0.4},
        {"sha256": "ab" * 32, "priority": 1.0},          # image not kept
        {"path": "gone.png", "priority": 0.5},           # deleted since
        {"path": "red_000.png"},                         # listed twice
    ])
    pool = read_pool(pool_dir)
    assert [it.rel for it in pool.items] == ["blue_001.png", "red_000.png"]
    assert pool.items[0].meta["predicted"] == "blue" and pool.queue_file == "queue.jsonl"
    assert any("not kept" in n for n in pool.notes) and any("gone.png" in n for n in pool.notes)


def test_a_queue_entry_outside_the_folder_is_refused(pool_dir):
    write_queue(pool_dir, [{"path": "red_000.png"}, {"path": "../../etc/passwd"}])
    with pytest.raises(PoolError, match=r"queue.jsonl:2: path '../../etc/passwd' is outside"):
        read_pool(pool_dir)


def test_a_queue_csv_and_a_bad_queue(pool_dir):
    (pool_dir / "queue.csv").write_text("path,reason\ngreen_002.png,new camera\n")
    pool = read_pool(pool_dir)
    assert [it.rel for it in pool.items] == ["green_002.png"]
    assert pool.items[0].meta == {"reason": "new camera"}
    (pool_dir / "queue.csv").unlink()
    (pool_dir / "queue.jsonl").write_text("{not json\n")
    with pytest.raises(PoolError, match="queue.jsonl:1: not JSON"):
        read_pool(pool_dir)


def test_empty_and_missing_pools(tmp_path):
    with pytest.raises(PoolError, match="pool not found"):
        read_pool(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoolError, match="no images found"):
        read_pool(tmp_path / "empty")


def test_a_pool_from_paths_keeps_order_and_drops_repeats(pool_dir):
    paths = [pool_dir / "green_001.png", pool_dir / "red_002.png", pool_dir / "green_001.png"]
    pool = Pool.from_paths(paths, [{"given": "g"}, {"given": "r"}, {"given": "g"}])
    assert [it.rel for it in pool.items] == ["green_001.png", "red_002.png"]
    assert pool.root == pool_dir.resolve()


def test_the_monitors_alert_folders_are_a_pool(pool_dir, tmp_path):
    """What `sightwise.monitor.alerts.write_queue_entry` writes (one folder per alert, kept
    images hard-linked from the log) is read as one pool: each image once although alerts
    overlap, least confident first, the model's guess as the suggestion, and an image that
    was not kept reported with its file."""
    from sightwise.core import sha256_path
    from sightwise.monitor.alerts import write_queue_entry

    log_dir, queue = tmp_path / "log", tmp_path / "queue"
    (log_dir / "img").mkdir(parents=True)
    files = sorted(pool_dir.glob("*.png"))[:4]
    for f in files:
        (log_dir / "img" / f.name).write_bytes(f.read_bytes())

    def item(f, conf, window, kept=True):
        return {"sha256": sha256_path(f), "time": 0.0, "window": window, "predicted": "red",
                "confidence": conf, "outlier_score": None, "source": str(f),
                "log_image": f"img/{f.name}" if kept else None}

    write_queue_entry(queue, {"id": "a1", "version": 3},
                      [item(files[0], 0.4, 1), item(files[1], 0.9, 1)], log_dir)
    write_queue_entry(queue, {"id": "a2", "version": 3},
                      [item(files[1], 0.9, 2), item(files[2], 0.2, 2),
                       item(files[3], 0.1, 2, kept=False)], log_dir)
    pool = read_pool(queue)
    assert [it.meta["sha256"] for it in pool.items] == [sha256_path(f) for f in
                                                         (files[2], files[0], files[1])]
    assert [it.path.read_bytes() for it in pool.items] == [f.read_bytes() for f in
                                                           (files[2], files[0], files[1])]
    first = pool.items[0].meta
    assert (first["suggested"], first["suggested_p"], first["model_version"]) == ("red", 0.2, 3)
    assert len(pool.notes) == 1 and "not kept" in pool.notes[0] and str(files[3]) in pool.notes[0]
