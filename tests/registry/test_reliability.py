"""Writers killed at random moments never leave the store inconsistent.

After every SIGKILL of a `register` or `promote` in flight: the alias points to a complete
version whose files verify, `PRAGMA integrity_check` is ok, only complete version folders
are visible (hidden staging folders are ignored and cleaned), every MLflow version has its
folder, and the history of moves chains and ends at the alias holder.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

KILLER = Path(__file__).with_name("_killer.py")
NAME = "m"


def _helpers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sw_registry_helpers_rel",
                                                  Path(__file__).with_name("_helpers.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


h = _helpers()


class Killer:
    def __init__(self, home: Path):
        self.proc = subprocess.Popen([sys.executable, str(KILLER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=h.env_for(home))
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def __call__(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the kill helper died"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_a_consistent_store(home, make_bundle):
    from sightwise.registry.promote import promote
    from sightwise.registry.store import mlflow_client
    from sightwise.registry.versions import register_bundle, search_versions

    # 1 MB payloads: copying and hashing take a real share of each write's time
    sources = [make_bundle(f"s{i}", seed=i, payload_bytes=1 << 20) for i in range(4)]
    register_bundle(sources[0], NAME)
    promote(NAME, 1)
    verified: set[str] = set()
    h.check_store(home, NAME, verified)
    killer = Killer(home)
    try:
        # how long each operation takes when left alone (the median of three runs)
        spans = {}
        for op, extra in (("register", {"source": str(sources[1])}), ("promote", {})):
            times = []
            for k in range(3):
                req = {"op": op, "name": NAME, "delay": 60, **extra}
                if op == "promote":
                    req["version"] = 1 + (k + 1) % 2
                res = killer(**req)
                assert res["rc"] == 0, res
                times.append(res["elapsed"])
            spans[op] = sorted(times)[1]
        h.check_store(home, NAME, verified)
        rng = random.Random(1234)
        kills = {"register": 0, "promote": 0}
        t0 = time.monotonic()
        for _ in range(200):
            if min(kills.values()) >= 25:
                break
            op = "register" if kills["register"] <= kills["promote"] else "promote"
            req = {"op": op, "name": NAME, "delay": rng.uniform(0, spans[op])}
            if op == "register":
                req["source"] = str(rng.choice(sources))
            else:
                req["version"] = rng.choice(sorted(int(v.version) for v in search_versions(
                    mlflow_client(), NAME)))
            res = killer(**req)
            kills[op] += res["killed"]
            h.check_store(home, NAME, verified)
        assert min(kills.values()) >= 25, kills
        assert time.monotonic() - t0 < 120
        # the store still works, and the next writer cleaned the staging leftovers
        assert killer(op="register", name=NAME, source=str(sources[2]), delay=60)["rc"] == 0
        assert not [p for p in (home / "bundles" / NAME).iterdir() if p.name.startswith(".")]
        newest = max(int(p.name) for p in (home / "bundles" / NAME).iterdir())
        assert killer(op="promote", name=NAME, version=newest, delay=60)["rc"] == 0
        assert h.check_store(home, NAME, verified) == newest
    finally:
        killer.close()


@pytest.mark.slow
def test_concurrent_promotions_end_in_one_consistent_state(home, make_bundle):
    from sightwise.registry.promote import promote, read_history
    from sightwise.registry.versions import register_bundle

    for i in range(3):
        register_bundle(make_bundle(f"c{i}", seed=i), NAME)
    promote(NAME, 1)
    procs = [subprocess.Popen([sys.executable, str(KILLER), "once", json.dumps(
        {"op": "promote", "name": NAME, "version": v, "force": False, "who": f"p{v}"})],
        env=h.env_for(home), stderr=subprocess.PIPE, text=True) for v in (2, 3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    holder = h.check_store(home, NAME, set())
    moves = [(e["from"], e["to"], e["who"]) for e in read_history(NAME)]
    assert moves[0] == (None, 1, moves[0][2])
    assert moves[1:] in ([(1, 2, "p2"), (2, 3, "p3")], [(1, 3, "p3"), (3, 2, "p2")])
    assert holder == moves[-1][1]


@pytest.mark.slow
def test_a_killed_first_time_store_creation_leaves_no_broken_database(tmp_path, monkeypatch):
    """The schema migrations (seconds) run on a hidden temp file renamed into place."""
    from sightwise.registry.promote import promote
    from sightwise.registry.store import ensure_default_store
    from sightwise.registry.versions import register_bundle

    home = tmp_path / "fresh"
    code = "from sightwise.registry.store import ensure_default_store; ensure_default_store()"
    proc = subprocess.Popen([sys.executable, "-c", code], env=h.env_for(home))
    try:
        deadline = time.monotonic() + 60
        while not list(home.glob(".mlflow.db.*.tmp")):  # migrating now
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert not (home / "mlflow.db").exists()
    monkeypatch.setenv("SIGHTWISE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ensure_default_store()
    assert h.integrity_ok(home / "mlflow.db") and not list(home.glob(".mlflow.db.*"))
    register_bundle(h.fake_bundle(tmp_path / "b"), NAME)
    promote(NAME, 1)
    assert h.check_store(home, NAME, set()) == 1
