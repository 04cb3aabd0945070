"""The closed loop on NEU (issue #20's acceptance demonstration), end to end.

    python bench/closed_loop.py [--data ../shared/datasets/neu_det/images] [--out /tmp/loop]
                                [--budget 3m] [--img-size 128] [--held-out scratches]
                                [--window 100] [--shadow-records 120]
                                [--per-class 150] [--stream-limit 0]   (smaller: a quick try)

1. v1: `sightwise pipeline run` on five of NEU's six classes (the first 150 images of each)
   -> registered, staging, production.
2. The shifted stream: the other images of the five classes plus the sixth class, which v1
   has never seen, interleaved. v1's true accuracy on it is measured with the ground truth.
3. `sightwise serve --model neu-loop@production --log project/serve-log --keep-images`
   (a child process on 127.0.0.1, SIGHTWISE_HOME = the bench's store); the first half of the
   stream goes through POST /v1/predict one image a request. The live monitor tests each
   window of `--window` predictions; an alert writes a folder to the labelling queue. The
   script prints after how many predictions the first alert came, and GET /v1/monitor's
   windows (v1's estimated accuracy). No alert: said so, and the first half stands in.
4. The queue's images are labelled through the labelling session (`LabelSession`:
   `next_item` / `answer`) by a simulated annotator who knows the truth by the image's
   sha256; the session writes labels.csv (`serve-log/...` paths inside the project).
   `read_pool` reads the monitor's alert folders as they are (each image once).
5. v2: PIPELINE.toml plus `labels = "labels.csv"`, `[shadow] min_records` and
   `[monitor] log`: the pipeline merges the labels (with provenance), retrains, compares v2
   with v1 on the test images neither trained on, gates, registers, moves staging, and
   stops at the shadow stage (exit 3, "shadow_records: 0 < N").
6. The server restarts with `--shadow neu-loop@staging`; the second half streams until the
   shadow log holds N answered shadow predictions; the pipeline reruns from the shadow
   stage (shadow gates, label-free accuracy of v2's shadow window against v1's) and
   promotes v2 while two clients keep sending the rest of the second half.
7. The server (watching neu-loop@production) swaps to v2 by itself; the script counts the
   non-200 answers around the swap and prints v1's and v2's estimated (GET /v1/monitor)
   and true (the served answers against the ground truth) accuracy.
8. The negative case: the same queue labelled by a lying annotator (half the images given
   the next class) gives a candidate that is gated out, the failing gate named (exit 3),
   and production stays v2.

Prints the before/after figures and writes OUT/closed_loop.json. Timings depend on the
machine's load; the docs say when they were taken under load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_serving import (  # noqa: E402 - the helper beside this script
    Server,
    alert_folders,
    label_pool,
    stream,
    tally,
    wait_for,
    windows_of,
)

SIXTH = "scratches"
PER_CLASS = 150
LOG_DIR = "serve-log"  # the server's prediction log, inside the project: the labels CSV
# names the queued images there, and the pipeline merges only images inside its folder


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))


def prepare(data: Path, out: Path, held_out: str,
            per_class: int = PER_CLASS) -> tuple[Path, list[tuple[Path, str]]]:
    """v1's data (copies: links in class folders are not followed) and the shifted stream
    [(image, true class)], in a fixed interleaved order."""
    v1 = out / "project" / "images"
    stream_dir = out / "project" / "stream"
    stream = []
    for cls in sorted(p.name for p in data.iterdir() if p.is_dir()):
        files = _images(data / cls)
        keep = [] if cls == held_out else files[:per_class]
        for f in keep:
            (v1 / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, v1 / cls / f.name)
        for i, f in enumerate(files[len(keep):]):
            (stream_dir / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, stream_dir / cls / f.name)
            stream.append((i, cls, stream_dir / cls / f.name))
    stream.sort()  # interleave the classes like live traffic: one of each in turn
    return v1, [(path, cls) for _, cls, path in stream]


def pipeline_toml(project: Path, budget: str, img_size: int | None, labels: bool,
                  shadow: int | None = None) -> Path:
    """PIPELINE.toml; with `shadow`, `[shadow] min_records` and the server's prediction log
    as `[monitor] log` (the label-free gate compares v2's shadow windows with v1's)."""
    size = f"img_size = {img_size}\n" if img_size else ""
    text = ('[data]\npath = "images"\n' + ('labels = "labels.csv"\n' if labels else "")
            + f'[train]\nstrategy = "linear-probe"\nbudget = "{budget}"\nseed = 0\n{size}'
            '[gates]\nmin_accuracy = 0.9\nmin_recall = 0.8\nmax_regression = 0.02\n'
            '[register]\nname = "neu-loop"\n')
    if shadow:
        text += f'[shadow]\nmin_records = {shadow}\n[monitor]\nlog = "{LOG_DIR}"\n'
    toml = project / "PIPELINE.toml"
    toml.write_text(text)
    return toml


def run(toml: Path) -> dict:
    from sightwise.pipeline.runner import run_pipeline
    from sightwise.pipeline.spec import load_spec

    t0 = time.perf_counter()
    summary = run_pipeline(load_spec(toml), log=lambda m: print(f"    {m}", file=sys.stderr),
                           progress=False)
    summary["wall_s"] = time.perf_counter() - t0
    print(f"  -> {summary['outcome']}: {summary['reason']} (exit {summary['exit_code']}, "
          f"{summary['wall_s']:.0f} s)")
    for g in summary["gates"] + summary.get("skipped_gates", []):
        value = "-" if g["value"] is None else f"{g['value']:.4g}"
        print(f"     {g['status']:<8}{g['name']:<30}{value:<10}{g.get('detail', '')}")
    return summary


def true_accuracy(ref: str, items: list[tuple[Path, str]]) -> tuple[float, list]:
    """Accuracy of the registered model on images with their ground truth, and its
    predictions (the same answers the server would give: the ONNX graph)."""
    from sightwise.registry.resolve import open_bundle
    from sightwise.runtime import Predictor

    pred = Predictor(open_bundle(ref))
    answers = pred.predict_paths([p for p, _ in items], top_k=1)
    right = sum(a.top and a.top[0].label == truth for a, (_, truth) in zip(answers, items, strict=True))
    return right / len(items), answers


def _est(windows: list[dict]) -> str:
    if not windows:
        return "no tested window"
    last = windows[-1]
    mean = sum(w["estimated_accuracy"] for w in windows) / len(windows)
    return (f"{last['estimated_accuracy']:.3f} on its last window (n={last['n']}, "
            f"{last.get('n_distinct', last['n'])} distinct), mean {mean:.3f} over {len(windows)}")


def _log_idle(srv) -> bool:
    """The log's writer (which runs the window tests) has caught up and fsynced."""
    status = srv.monitor()["log"]
    return status.get("pending", 0) == 0 and status.get("lag_s", 0.0) == 0.0


def step_monitor(out: Path, project: Path, first: list, window: int):
    """3. Serve v1 with the prediction log and kept images; stream the first half; the live
    monitor alerts and queues. Returns (answers, first alert or None, v1's windows)."""
    log_dir, queue_dir = project / LOG_DIR, project / LOG_DIR / "labelling-queue"
    seen: dict = {}

    def note_alert(answers):  # after how many answers the first alert folder was visible
        if "at" not in seen and alert_folders(queue_dir):
            seen["at"] = len(answers)
        return False

    with Server("neu-loop@production", log_dir, out / "serve-v1.log", window=window) as srv:
        t0 = time.perf_counter()
        answers = stream(srv, first, until=note_alert)
        rate = len(answers) / (time.perf_counter() - t0)
        # the log's writer thread runs the window tests: wait (bounded) until it caught up
        wait_for(lambda: _log_idle(srv), 30)
        summary = srv.monitor()
    folders = alert_folders(queue_dir)
    first_alert = None
    if folders:
        ev = json.loads((folders[0] / "alert.json").read_text())
        first_alert = {"window": ev["window"]["index"], "folders": len(folders),
                       "after": (ev["window"]["index"] + 1) * window, "seen_after": seen.get("at")}
    wins = [w for w in windows_of(summary) if str(w.get("version")) in ("1", "None")]
    t = tally(answers)
    print(f"   {len(answers)} requests ({rate:.1f}/s), {t['failed']} failed; served true accuracy "
          f"{t['by_version'].get('1', {}).get('accuracy', float('nan')):.3f}")
    print(f"   monitor: {len(windows_of(summary))} tested windows of {window}, "
          f"{sum(w['drift'] for w in windows_of(summary))} drifted, {summary['alerts']} alert(s); "
          f"v1 estimated accuracy {_est(wins)} (reference {summary.get('reference_accuracy')})")
    print("   windows (index: D drifted, A alerted; estimated accuracy): " + ", ".join(
        f"{w['index']}:{'A' if w['alert'] else 'D' if w['drift'] else '-'} "
        f"{w['estimated_accuracy']:.2f}" for w in wins))
    if first_alert:
        print(f"   first alert: window {first_alert['window']}, i.e. after {first_alert['after']} "
              f"predictions (its queue folder was on disk after {first_alert['seen_after']} "
              f"answers); {len(folders)} alert folder(s)")
    return answers, first_alert, wins


def step_label(project: Path, first: list, first_alert, classes: list[str], truth: dict,
               *, labels_csv: Path, annotator: str, corrupt: bool = False, pool=None):
    """4. Label the queue through the labelling session. Returns the pool (kept for step 8)."""
    from sightwise.label.pool import Pool, read_pool

    if pool is None:
        queue_dir = project / LOG_DIR / "labelling-queue"
        if first_alert and alert_folders(queue_dir):
            pool = read_pool(queue_dir)
            print(f"   queue: {len(pool)} distinct kept images from the alert folders "
                  f"({len(pool.notes)} note(s){': ' + pool.notes[0] if pool.notes else ''})")
        else:
            print("   FALLBACK: no alert (or no kept image) -- the whole first half stands in "
                  "for the queue")
            pool = Pool.from_paths([p for p, _ in first], root=project,
                                   metas=[{"sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                                          for p, _ in first])
    counts = label_pool(pool, labels_csv, classes, truth, annotator=annotator, corrupt=corrupt)
    print(f"   labelling session ({annotator}): {dict(counts)} -> {labels_csv.name}")
    return pool


def step_shadow_and_swap(out: Path, project: Path, toml: Path, second: list, window: int,
                         min_records: int) -> dict:
    """6./7. Serve v1 with v2 shadowing; stream until the shadow log holds `min_records`
    answered shadow predictions; rerun the pipeline while traffic continues; the server
    swaps to v2 by itself. Returns the figures."""
    import threading

    from sightwise.shadowlog import shadow_summary

    def shadowed(answers):
        return len(answers) % 10 == 0 and shadow_summary("neu-loop", 2)["n"] >= min_records

    with Server("neu-loop@production", project / LOG_DIR, out / "serve-shadow.log",
                shadow="neu-loop@staging", window=window) as srv:
        phase_b = stream(srv, second, until=shadowed)
        n = wait_for(lambda: shadow_summary("neu-loop", 2)["n"] >= min_records, 30)
        print(f"6. shadow: {len(phase_b)} requests, {shadow_summary('neu-loop', 2)['n']} shadow "
              f"records{'' if n else ' (fewer than min_records: the rerun will say so)'}")
        rest, phase_c, swapped, at = second[len(phase_b):], [], threading.Event(), {}

        def traffic(items):  # slow before the swap, so that most of the rest is served by v2
            for item in items:
                phase_c.extend(stream(srv, [item]))
                if phase_c[-1].get("version") == 2 and not swapped.is_set():
                    at["t"] = time.time()  # the monitor's windows carry wall-clock times
                    swapped.set()
                if not swapped.is_set():
                    time.sleep(0.3)

        # two clients at once, so that requests are in flight while the model is swapped
        senders = [threading.Thread(target=traffic, args=(rest[i::2],), daemon=True)
                   for i in range(2)]
        for t in senders:
            t.start()
        s = run(toml)
        if s["exit_code"] == 0:
            wait_for(swapped.is_set, 60)
        for t in senders:
            t.join(timeout=900)
        wait_for(lambda: _log_idle(srv), 30)
        summary = srv.monitor()
    swap_at = next((i for i, a in enumerate(phase_c) if a.get("version") == 2), None)
    return {"rerun": s, "phase_b": phase_b, "phase_c": phase_c, "swap_at": swap_at,
            "summary": summary, "swap_time": at.get("t")}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/datasets/neu_det/images")
    ap.add_argument("--out", default="/tmp/sightwise-closed-loop")
    ap.add_argument("--budget", default="3m")
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--held-out", default=SIXTH)
    ap.add_argument("--per-class", type=int, default=PER_CLASS, help="v1's images per class")
    ap.add_argument("--stream-limit", type=int, default=0, help="first N of the stream (0: all)")
    ap.add_argument("--window", type=int, default=100, help="the monitor's window")
    ap.add_argument("--shadow-records", type=int, default=120, help="[shadow] min_records")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        sys.exit(f"no dataset at {data} (NEU: ../shared/datasets/neu_det/images)")
    shutil.rmtree(out, ignore_errors=True)
    os.environ.setdefault("SIGHTWISE_HOME", str(out / "home"))
    print(f"closed loop on {data} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}), "
          f"store {os.environ['SIGHTWISE_HOME']}")
    _, stream_items = prepare(data, out, args.held_out, args.per_class)
    stream_items = stream_items[:args.stream_limit or None]
    truth = {hashlib.sha256(p.read_bytes()).hexdigest(): c for p, c in stream_items}
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    project = out / "project"
    half = len(stream_items) // 2
    first, second = stream_items[:half], stream_items[half:]
    print(f"1. v1 on five classes ({args.held_out} held out)")
    toml = pipeline_toml(project, args.budget, args.img_size, labels=False)
    s1 = run(toml)
    acc1_q, _ = true_accuracy("neu-loop@production", first)
    acc1_u, _ = true_accuracy("neu-loop@production", second)
    print(f"2. shifted stream ({len(stream_items)} images, the sixth class included): v1 true "
          f"accuracy {acc1_q:.3f} (first half), {acc1_u:.3f} (second half)")
    print(f"3. serve v1, stream the first half ({len(first)} images) through POST /v1/predict")
    answers_a, first_alert, v1_windows = step_monitor(out, project, first, args.window)
    if first_alert is None:
        print("   NO ALERT: the monitor did not alert on the first half")
    print("4. label the queue through the labelling session (ground truth by sha256)")
    labels_csv = project / "labels.csv"
    pool = step_label(project, first, first_alert, classes, truth, labels_csv=labels_csv,
                      annotator="ground-truth")
    print(f"5. v2 on the merged labels, [shadow] min_records = {args.shadow_records}")
    toml = pipeline_toml(project, args.budget, args.img_size, labels=True,
                         shadow=args.shadow_records)
    s2 = s2_first = run(toml)
    live = None
    if s2["version"] and any(st["name"] == "staging" and st["status"] != "failed"
                             for st in s2.get("stages", [])):
        live = step_shadow_and_swap(out, project, toml, second, args.window, args.shadow_records)
        s2 = live["rerun"]
    else:
        print("6./7. SKIPPED: v2 did not reach staging, nothing to shadow or swap to")
    acc2_u, _ = true_accuracy("neu-loop@production", second)
    result = report_live(live, answers_a, v1_windows, acc1_u, acc2_u)
    print("8. negative case: labels corrupted on purpose (the same queue, a lying annotator)")
    labels_csv.replace(project / "labels.ground-truth.csv")
    step_label(project, first, first_alert, classes, truth, labels_csv=labels_csv,
               annotator="mallory", corrupt=True, pool=pool)
    s3 = run(toml)
    result.update({"pipeline": {
                       "v1": {"exit": s1["exit_code"], "version": s1["version"], "wall_s": s1["wall_s"]},
                       "v2": {"exit": s2["exit_code"], "version": s2["version"], "wall_s": s2["wall_s"],
                              "first_run_exit": s2_first["exit_code"],
                              "first_run_reason": s2_first["reason"],
                              "first_run_wall_s": s2_first["wall_s"]}},
                   "first_alert": first_alert, "queued": len(pool),
                   "corrupted": {"exit": s3["exit_code"], "reason": s3["reason"]},
                   "stream": {"n": len(stream_items), "v1_acc_unseen": acc1_u,
                              "v2_acc_unseen": acc2_u}})
    (out / "closed_loop.json").write_text(json.dumps(result, indent=2))
    print(f"before/after on the second half of the shifted stream (never labelled): accuracy "
          f"{acc1_u:.3f} -> {acc2_u:.3f}; corrupted labels: exit {s3['exit_code']} ({s3['reason']})")


def report_live(live: dict | None, answers_a: list, v1_windows: list, acc1_u: float,
                acc2_u: float) -> dict:
    """7. What the server answered around the swap, and the monitor's estimates."""
    t_a = tally(answers_a)
    v1_true = t_a["by_version"].get("1", {}).get("accuracy")
    if live is None:
        print(f"7. no swap; offline true accuracy on the second half: v1 {acc1_u:.3f}, "
              f"production now {acc2_u:.3f}")
        return {"v1": {"served_true": v1_true}}
    t_c = tally(live["phase_c"])
    v2_all = [w for w in windows_of(live["summary"]) if str(w.get("version")) == "2"]
    # v2's windows before the swap hold its shadow answers; after it, the served ones (and
    # the shadow's copies: staging and production are both v2 then, so each image twice)
    t_swap = live["swap_time"] or float("inf")
    v2_shadow = [w for w in v2_all if w["start"] < t_swap]
    v2_windows = [w for w in v2_all if w["start"] >= t_swap]
    v2 = t_c["by_version"].get("2", {})
    print(f"7. hot swap: {len(live['phase_c'])} requests while the pipeline promoted, "
          f"{t_c['failed']} failed (statuses {t_c['statuses']}); the first answer from v2 was "
          f"request {live['swap_at']}")
    print(f"   v1: estimated {_est(v1_windows)}; true {v1_true:.3f} on the "
          f"{t_a['by_version'].get('1', {}).get('n', 0)} images it served in step 3")
    print(f"   v2 in shadow, before the swap: estimated {_est(v2_shadow)}")
    if v2:
        print(f"   v2 serving, after the swap: estimated {_est(v2_windows)}; true "
              f"{v2['accuracy']:.3f} on the {v2['n']} images it served")
    else:
        print("   v2 served no request: no swap was seen")
    print(f"   offline, the whole second half: v1 {acc1_u:.3f}, v2 {acc2_u:.3f}")
    return {"swap": {"requests": len(live["phase_c"]), "failed": t_c["failed"],
                     "first_v2_request": live["swap_at"], "statuses": t_c["statuses"]},
            "shadow_requests": len(live["phase_b"]),
            "v1": {"served_true": v1_true, "estimated": [w["estimated_accuracy"] for w in v1_windows]},
            "v2": {"served_true": v2.get("accuracy"), "served_n": v2.get("n"),
                   "estimated": [w["estimated_accuracy"] for w in v2_windows],
                   "estimated_in_shadow": [w["estimated_accuracy"] for w in v2_shadow]}}


if __name__ == "__main__":
    main()
