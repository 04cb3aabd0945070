"""Run pipelines in forked children and SIGKILL them inside a chosen stage.

Importing torch, MLflow and the training code costs seconds, so this process imports them
once and forks one child per run; the parent never opens the MLflow store (no connection
is shared with a child). For each JSON line on stdin {"toml", "log", "kill_at", "delay"} it
forks a child that runs the pipeline (its log lines appended to "log") and SIGKILLs it
inside stage `kill_at`, then answers {"killed", "rc"}:

- "at": "end": the child has done all of the stage's work (files written, versions
  registered, aliases moved) and is about to record it: the hardest moment to resume from.
  The child's copy of the stage says so through a pipe and waits to be killed.
- "at": "marker": `delay` seconds after the child wrote WORK/state/<kill_at>.started
  (mid-stage, for a stage that takes that long).

With "kill_at": null the child runs to the end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

MAX_WAIT_S = 300.0


def child(req: dict, ready_w: int) -> None:
    code = 1
    try:
        from sightwise.pipeline import runner
        from sightwise.pipeline.spec import load_spec

        if req["kill_at"] and req["at"] == "end":
            _hold_at_end(runner, req["kill_at"], ready_w)

        with open(req["log"], "a", encoding="utf-8") as f:
            def log(msg: str) -> None:
                f.write(msg + "\n")
                f.flush()

            log("=== run")
            summary = runner.run_pipeline(load_spec(req["toml"]), log=log, progress=False,
                                          track=False)
            log(f"=== exit {summary['exit_code']}: {summary['reason']}")
            code = summary["exit_code"]
    except BaseException as exc:  # noqa: BLE001 - reported through the exit code
        print(f"child: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    os._exit(code)


def _hold_at_end(runner, name: str, ready_w: int) -> None:
    import dataclasses

    def wrap(stage):
        def run(ctx):
            out = stage.run(ctx)
            os.write(ready_w, b"1")
            time.sleep(MAX_WAIT_S)  # killed here, before the runner records the stage
            return out
        return dataclasses.replace(stage, run=run)

    runner.STAGES = tuple(wrap(s) if s.name == name else s for s in runner.STAGES)


def _mtime(path: str | None) -> int | None:
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


def supervise(req: dict, work: str) -> dict:
    marker = os.path.join(work, "state", f"{req['kill_at']}.started") if req["kill_at"] else None
    stale = _mtime(marker)  # a marker a killed run left: wait for this child's own
    ready_r, ready_w = os.pipe()
    os.set_blocking(ready_r, False)
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        child(req, ready_w)
    os.close(ready_w)
    try:
        return _watch(pid, req, marker, stale, ready_r)
    finally:
        os.close(ready_r)


def _watch(pid: int, req: dict, marker, stale, ready_r: int) -> dict:
    deadline = time.monotonic() + MAX_WAIT_S
    kill_time = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"killed": False, "rc": os.waitstatus_to_exitcode(status)}
        if req.get("at") == "end":
            try:
                if os.read(ready_r, 1):
                    kill_time = time.monotonic()
            except BlockingIOError:
                pass
        elif marker and kill_time is None and _mtime(marker) not in (None, stale):
            kill_time = time.monotonic() + req["delay"]
        if kill_time is not None and time.monotonic() >= kill_time:
            os.kill(pid, signal.SIGKILL)  # our own child
            os.waitpid(pid, 0)
            return {"killed": True, "rc": -9}
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return {"killed": True, "rc": -9, "timeout": True}


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import torch

    torch.set_num_threads(1)  # before any op: no thread pool exists when we fork
    import mlflow.tracking  # noqa: F401

    import sightwise.export.api  # noqa: F401
    import sightwise.pipeline.runner  # noqa: F401
    import sightwise.registry.promote  # noqa: F401
    import sightwise.registry.versions  # noqa: F401
    import sightwise.train.pipeline  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(supervise(req, req["work"])), flush=True)


if __name__ == "__main__":
    main()
