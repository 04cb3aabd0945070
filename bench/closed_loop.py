"""The closed loop on NEU (issue #20's acceptance demonstration), as far as it runs today.

    python bench/closed_loop.py [--data ../shared/datasets/neu_det/images] [--out /tmp/loop]
                                [--budget 3m] [--img-size 128] [--held-out scratches]

1. v1: `sightwise pipeline run` on five of NEU's six classes (the first 150 images of each)
   -> registered, staging, production.
2. The shifted stream: the other images of the five classes plus the sixth class, which v1
   has never seen. v1's true accuracy on it is measured with the ground truth.
3. TODO(monitor): serve v1 (`sightwise serve --model neu-loop@production`) with the
   prediction log on, stream the images through it, and let `sightwise monitor` alert
   within its stated delay and queue the drifted window's images. Until then every
   image of the first half of the stream stands in for the queue.
4. TODO(label): the queued images are labelled through #10's labelling session. Until then
   a simulated annotator writes the ground truth straight into the labels CSV, in the
   tool's format (path,label,annotator,time,model_version,suggested,suggested_p).
5. v2: the same PIPELINE.toml plus `labels = "labels.csv"`: the pipeline merges the labels
   (with provenance), retrains, compares v2 with v1 on the test images neither trained on,
   gates, registers, moves staging.
6. TODO(serve): shadow -- `sightwise serve --model neu-loop@production --shadow
   neu-loop@staging` writes sightwise.shadowlog records; add `[shadow] min_records`
   to the TOML and the pipeline waits for them before production. Until then the TOML has
   no [shadow] section and v2 goes from staging to production on its gates.
7. TODO(serve): the running server hot-swaps to v2 (it watches NAME@production) without a
   failed request, and the monitor's estimated accuracy recovers. Until then the script
   measures v2's true accuracy on the second half of the stream (never labelled).
8. The negative case: a candidate trained on labels corrupted on purpose is gated out, the
   failing gate named (exit 3), and production stays v2.

Prints the before/after figures. Timings depend on the machine's load; the docs say when
they were taken under load.
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

SIXTH = "scratches"
PER_CLASS = 150


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))


def prepare(data: Path, out: Path, held_out: str) -> tuple[Path, list[tuple[Path, str]]]:
    """v1's data (copies: links in class folders are not followed) and the shifted stream
    [(image, true class)], in a fixed interleaved order."""
    v1 = out / "project" / "images"
    stream_dir = out / "project" / "stream"
    stream = []
    for cls in sorted(p.name for p in data.iterdir() if p.is_dir()):
        files = _images(data / cls)
        keep = [] if cls == held_out else files[:PER_CLASS]
        for f in keep:
            (v1 / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, v1 / cls / f.name)
        for i, f in enumerate(files[len(keep):]):
            (stream_dir / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, stream_dir / cls / f.name)
            stream.append((i, cls, stream_dir / cls / f.name))
    stream.sort()  # interleave the classes like live traffic: one of each in turn
    return v1, [(path, cls) for _, cls, path in stream]


def pipeline_toml(project: Path, budget: str, img_size: int | None, labels: bool) -> Path:
    size = f"img_size = {img_size}\n" if img_size else ""
    text = ('[data]\npath = "images"\n' + ('labels = "labels.csv"\n' if labels else "")
            + f'[train]\nstrategy = "linear-probe"\nbudget = "{budget}"\nseed = 0\n{size}'
            '[gates]\nmin_accuracy = 0.9\nmin_recall = 0.8\nmax_regression = 0.02\n'
            '[register]\nname = "neu-loop"\n')
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
    for g in summary["gates"]:
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


def simulated_annotator(labels_csv: Path, queued: list[tuple[Path, str]], answers,
                        *, corrupt: bool = False) -> None:
    """TODO(label): #10's labelling session writes this file; here the ground truth does
    (or, with `corrupt`, a deliberately wrong class for half the images, chosen by a hash
    of the file name so every class is hit)."""
    classes = sorted({c for _, c in queued})
    lines = ["path,label,annotator,time,model_version,suggested,suggested_p"]
    for (path, truth), ans in zip(queued, answers, strict=True):
        flip = corrupt and hashlib.sha256(path.name.encode()).digest()[0] % 2 == 1
        label = classes[(classes.index(truth) + 1) % len(classes)] if flip else truth
        top = ans.top[0] if ans.top else None
        lines.append(f"{path.relative_to(labels_csv.parent).as_posix()},{label},"
                     f"{'mallory' if corrupt else 'ground-truth'},"
                     f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())},1,"
                     f"{top.label if top else ''},{f'{top.probability:.6f}' if top else ''}")
    labels_csv.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/datasets/neu_det/images")
    ap.add_argument("--out", default="/tmp/sightwise-closed-loop")
    ap.add_argument("--budget", default="3m")
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--held-out", default=SIXTH)
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        sys.exit(f"no dataset at {data} (NEU: ../shared/datasets/neu_det/images)")
    shutil.rmtree(out, ignore_errors=True)
    os.environ.setdefault("SIGHTWISE_HOME", str(out / "home"))
    print(f"closed loop on {data} ({os.cpu_count()} cores), store {os.environ['SIGHTWISE_HOME']}")
    _, stream = prepare(data, out, args.held_out)
    project = out / "project"
    half = len(stream) // 2
    queued, unseen = stream[:half], stream[half:]
    print(f"1. v1 on five classes ({args.held_out} held out)")
    toml = pipeline_toml(project, args.budget, args.img_size, labels=False)
    s1 = run(toml)
    acc1_q, answers = true_accuracy("neu-loop@production", queued)
    acc1_u, _ = true_accuracy("neu-loop@production", unseen)
    print(f"2. shifted stream ({len(stream)} images, the sixth class included): v1 true accuracy "
          f"{acc1_q:.3f} (first half), {acc1_u:.3f} (second half)")
    print("3. TODO(monitor): alert and queue; stand-in: the first half is queued")
    print(f"4. TODO(label): simulated annotator labels {len(queued)} queued images")
    simulated_annotator(project / "labels.csv", queued, answers)
    print("5. v2 on the merged labels")
    pipeline_toml(project, args.budget, args.img_size, labels=True)
    s2 = run(toml)
    print("6./7. TODO(serve): shadow and hot swap; v2 promoted on its gates")
    acc2_u, _ = true_accuracy("neu-loop@production", unseen)
    print(f"   v2 true accuracy on the unlabelled second half: {acc2_u:.3f} (v1: {acc1_u:.3f})")
    print("8. negative case: labels corrupted on purpose")
    simulated_annotator(project / "labels.csv", queued, answers, corrupt=True)
    s3 = run(toml)
    result = {"v1": {"exit": s1["exit_code"], "version": s1["version"], "wall_s": s1["wall_s"]},
              "v2": {"exit": s2["exit_code"], "version": s2["version"], "wall_s": s2["wall_s"]},
              "corrupted": {"exit": s3["exit_code"], "reason": s3["reason"]},
              "stream": {"n": len(stream), "v1_acc_unseen": acc1_u, "v2_acc_unseen": acc2_u}}
    (out / "closed_loop.json").write_text(json.dumps(result, indent=2))
    print(f"before/after on the unlabelled half of the shifted stream: accuracy {acc1_u:.3f} -> "
          f"{acc2_u:.3f}; corrupted labels: exit {s3['exit_code']} ({s3['reason']})")


if __name__ == "__main__":
    main()
