"""Run registry writes in child processes and SIGKILL them at chosen moments.

A plain subprocess per kill would spend ~3 s importing MLflow before doing anything, so
this script imports once, builds the MLflow client once (its schema check reads every
migration script: ~0.3 s), closes all its database connections (SQLAlchemy's rule for
forking) and forks a child per operation; each child opens its own connections. For each JSON line on stdin:
{"op": "register"|"promote"|"rollback", "name", "source"|"version", "delay"} it forks; the
child opens its MLflow client (a few hundred ms of SQLAlchemy set-up that writes nothing)
and says so through a pipe; from then on the parent lets it run for `delay` seconds,
SIGKILLs it if still running, and answers one JSON line {"killed", "rc", "elapsed"}. So
the kill moments spread over the operation itself, where the writes are.
With the argument `once`, it runs one operation from argv[2] in-process instead (for the
concurrent-promotion test).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def operate(req: dict) -> None:
    from sightwise.registry.promote import promote, rollback
    from sightwise.registry.versions import register_bundle

    if req["op"] == "register":
        register_bundle(req["source"], req["name"])
    elif req["op"] == "promote":
        promote(req["name"], req["version"], force=req.get("force", True), who=req.get("who"))
    else:
        rollback(req["name"])


def child(req: dict, ready_fd: int) -> None:
    code = 0
    try:
        from sightwise.registry.store import mlflow_client

        mlflow_client().search_registered_models(max_results=1)
        os.write(ready_fd, b"1")
        operate(req)
    except BaseException as exc:  # noqa: BLE001 - reported through the exit code
        print(f"child: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    os._exit(code)


def supervise(req: dict) -> dict:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        child(req, ready_w)
    os.close(ready_w)
    os.read(ready_r, 1)  # b"" if the child died first
    os.close(ready_r)
    t0 = time.perf_counter()
    deadline = t0 + req["delay"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"killed": False, "rc": os.waitstatus_to_exitcode(status),
                    "elapsed": time.perf_counter() - t0}
        if time.perf_counter() >= deadline:
            os.kill(pid, signal.SIGKILL)  # our own child: it stays a zombie until reaped
            os.waitpid(pid, 0)
            return {"killed": True, "rc": -9, "elapsed": time.perf_counter() - t0}
        time.sleep(0.0005)


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if sys.argv[1:2] == ["once"]:
        operate(json.loads(sys.argv[2]))
        return
    import sightwise.registry.promote  # noqa: F401
    import sightwise.registry.versions  # noqa: F401
    from sightwise.registry.store import mlflow_client

    client = mlflow_client()  # cached: the children reuse it
    client.search_registered_models(max_results=1)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        close_connections(client)
        print(json.dumps(supervise(json.loads(line))), flush=True)


def close_connections(client) -> None:
    """No SQLite connection may be shared with a child (SQLAlchemy: dispose before fork)."""
    for store in (client._tracking_client.store, client._get_registry_client().store):
        store.engine.dispose()


if __name__ == "__main__":
    main()
