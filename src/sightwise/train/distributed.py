"""Distributed fine-tuning: torchrun + DistributedDataParallel, as timm and Ultralytics train.

`sightwise train DATA --out RUN --nproc N` re-runs itself as N processes under torchrun
(`launch`); `torchrun --nproc-per-node N -m sightwise.cli train DATA --out RUN` works too
(the command sees torchrun's RANK / WORLD_SIZE and calls `run_rank`). On CPU the ranks talk
over gloo, on GPUs over NCCL, one GPU per rank.

What each rank does:
1. rank 0 decodes the data once into the uint8 cache (as a single run would) and saves its
   arrays under RUN/cache/; the other ranks memory-map them;
2. every rank runs the same fine-tuning loop (`finetune.fit`) on the model wrapped in DDP:
   each global batch (the same seeded order on every rank) is split between the ranks,
   DistributedSampler's interleave, so N ranks take the same steps, with the same global
   batch size and learning-rate schedule, as one process would; DDP averages gradients;
3. what must be the same everywhere is agreed: the budget's clock and the epoch plan come
   from rank 0, validation is split across ranks and gathered, the mean loss and the image
   count are all-reduced, so every rank stops at the same step;
4. rank 0 alone evaluates, writes the report and the bundle; the command then exports the
   ONNX graph (in rank 0, or in the process that launched torchrun).

`auto` fine-tunes under --nproc (its linear probe is one forward pass, nothing to share).
BatchNorm statistics are each rank's own (no SyncBatchNorm): timm's default as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from sightwise.config import TrainConfig
from sightwise.errors import SightwiseError
from sightwise.train.budget import Budget

TIMEOUT = timedelta(minutes=30)  # a rank that waits longer than this on the others fails


# -- launching -----------------------------------------------------------------------------


def under_torchrun() -> bool:
    """True in a process torchrun started (it sets RANK, LOCAL_RANK and WORLD_SIZE)."""
    return all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def launch(cfg: TrainConfig, nproc: int, *, threads: int | None = None, log=print) -> dict:
    """Train with `nproc` processes under torchrun on this machine; rank 0's metrics (the
    bundle is written, not exported yet).

    Each rank gets `threads` (default: cores / nproc) intra-op threads, so N ranks do not
    oversubscribe the CPU."""
    if nproc < 2:
        raise ValueError("--nproc must be at least 2 to launch distributed training")
    check_strategy(cfg)
    with tempfile.TemporaryDirectory(prefix="sightwise-ddp-") as tmp:
        cfg_file = Path(tmp) / "config.json"
        cfg_file.write_text(json.dumps(asdict(cfg)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0",
               "-m", "sightwise.train.distributed", str(cfg_file)]
        per_rank = threads or max(1, (os.cpu_count() or 1) // nproc)
        env = {**os.environ, "OMP_NUM_THREADS": str(per_rank)}
        log(f"distributed: {nproc} processes x {per_rank} thread(s) under torchrun")
        rc = subprocess.run(cmd, env=env, check=False).returncode
    if rc != 0:
        raise SightwiseError(f"distributed training failed (torchrun exit code {rc}); "
                             "the ranks' errors are above")
    return json.loads((Path(cfg.out) / "metrics.json").read_text(encoding="utf-8"))


def check_strategy(cfg: TrainConfig) -> None:
    if cfg.strategy == "linear-probe":
        raise ValueError("--nproc distributes fine-tuning: use --strategy finetune, scratch "
                         "or auto (a linear probe is one forward pass; run it in one process)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of each rank launched by `launch`: python -m sightwise.train.distributed
    CONFIG.json."""
    args = sys.argv[1:] if argv is None else argv
    cfg = TrainConfig(**json.loads(Path(args[0]).read_text(encoding="utf-8")))
    run_rank(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    return 0


# -- one rank ------------------------------------------------------------------------------


def run_rank(cfg: TrainConfig, log=print) -> dict | None:
    """This process's part of a distributed run; rank 0 returns the metrics (bundle
    written, not exported yet), the others None."""
    from sightwise.train.strategies import run_strategy

    check_strategy(cfg)
    rank = setup()
    say = log if rank == 0 else (lambda _msg: None)
    if cfg.strategy == "auto":
        say("distributed: auto fine-tunes (the linear-probe comparison runs in one process)")
    run_cfg = replace(cfg, strategy="finetune" if cfg.strategy == "auto" else cfg.strategy,
                      progress=cfg.progress and rank == 0)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    budget = SyncedBudget(cfg.budget_s)
    try:
        data, cache, pre, num_classes = _shared_data(run_cfg, rank, say)
        trained = run_strategy(run_cfg, pre, cache, num_classes, budget, say)
        dist.barrier()
    finally:
        dist.destroy_process_group()  # from here the budget is rank 0's own clock
    if rank != 0:
        return None
    return _finish(run_cfg, cfg, pre, data, trained, budget, log)


def setup() -> int:
    """Join the process group (gloo on CPU, NCCL with one GPU per rank); returns the rank."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl", timeout=TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return dist.get_rank()


def _shared_data(cfg: TrainConfig, rank: int, log):
    """Rank 0 prepares the data (decode, split, manifest) and saves the cache arrays; the
    others map them. A failure on rank 0 is agreed on, so the others stop too."""
    from sightwise.data.cache import ImageCache
    from sightwise.data.preprocess import Preprocessing
    from sightwise.train.pipeline import check_out, prepare_data

    run_dir = Path(cfg.out)
    folder = run_dir / "cache" / "ranks"
    data = cache = pre = None
    ok = 0.0
    try:
        if rank == 0:
            check_out(run_dir, cfg.overwrite)
            run_dir.mkdir(parents=True, exist_ok=True)
            data = prepare_data(cfg, run_dir, log)
            cache, pre = data.cache, data.preprocessing
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("images", "labels", "splits"):
                np.save(folder / f"{name}.npy", np.asarray(getattr(cache, name)), allow_pickle=False)
            (folder / "meta.json").write_text(json.dumps(
                {"classes": len(data.dataset.classes), "preprocessing": pre.to_dict()}))
            ok = 1.0
    finally:
        ok = agree(ok)  # rank 0 says whether it got this far, even while raising
    if ok < 1:
        raise SystemExit(1)  # rank 0 reports why
    meta = json.loads((folder / "meta.json").read_text())
    if rank != 0:
        cache = ImageCache(images=np.load(folder / "images.npy", mmap_mode="r"),
                           labels=np.load(folder / "labels.npy"),
                           splits=np.load(folder / "splits.npy"), samples=[])
        pre = Preprocessing.from_dict(meta["preprocessing"])
    return data, cache, pre, int(meta["classes"])


def _finish(run_cfg, cfg, pre, data, trained, budget, log) -> dict:
    """Rank 0: evaluate, report and write the bundle, as `run_training` does. Exporting
    the ONNX graph is the caller's step (`sightwise.cli` calls `export_bundle`: the export
    layer sits above training)."""
    import shutil

    from sightwise.bundle import atomic_write_json
    from sightwise.train.evaluation import evaluate_and_report
    from sightwise.train.pipeline import write_bundle

    run_dir = Path(cfg.out)
    shutil.rmtree(run_dir / "cache" / "ranks", ignore_errors=True)
    if (run_dir / "cache").is_dir() and not any((run_dir / "cache").iterdir()):
        (run_dir / "cache").rmdir()
    metrics = evaluate_and_report(cfg, pre, data, trained, run_dir, budget, log)
    write_bundle(cfg, pre, data, trained, metrics, run_dir / "bundle")
    members = trained.candidates.get(run_cfg.strategy, {}).get("members", [])
    metrics["distributed"] = {
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "backend": "nccl" if torch.cuda.is_available() else "gloo",
        "threads_per_rank": torch.get_num_threads(),
        "images_per_second": [m["images_per_second"] for m in members]}
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


# -- what the training loop calls (no-ops in a single process) -----------------------------


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wrap(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The model in DDP when distributed (else itself). Each rank then augments with its
    own random stream (seed + rank); the weights start as rank 0's (DDP broadcasts them)."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(seed + dist.get_rank())
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(batch: np.ndarray) -> np.ndarray:
    """This rank's rows of a global batch (every n-th, from its rank on). Empty on every
    rank when the batch cannot give each rank the two rows BatchNorm needs.

    >>> shard(np.arange(5)).tolist()  # one process: the whole batch
    [0, 1, 2, 3, 4]
    """
    if not active():
        return batch
    n = dist.get_world_size()
    return batch[dist.get_rank()::n] if len(batch) >= 2 * n else batch[:0]


def _device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def agree(value: float) -> float:
    """Rank 0's value on every rank (for decisions taken from a clock)."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.broadcast(t, src=0)
    return float(t.item())


def total(value: float) -> float:
    """The sum over ranks."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return float(t.item())


def evaluate(fn, model, x: np.ndarray, *args) -> np.ndarray:
    """`fn(model, x, *args)` (logits (N, C)) with the rows split across ranks and gathered
    back in order, so every rank sees the same numbers."""
    if not active():
        return fn(model, x, *args)
    n, rank = dist.get_world_size(), dist.get_rank()
    local = fn(model, x[rank::n], *args) if len(x) > rank else None
    width = _agree_width(local)
    rows = -(-len(x) // n)
    pad = torch.zeros((rows, width), dtype=torch.float32, device=_device())
    if local is not None and len(local):
        pad[:len(local)] = torch.from_numpy(np.asarray(local, np.float32)).to(pad.device)
    parts = [torch.empty_like(pad) for _ in range(n)]
    dist.all_gather(parts, pad)
    # parts[r][i] is row i * n + r: interleave back, drop the padding at the end
    return torch.stack(parts, 1).reshape(rows * n, width)[:len(x)].cpu().numpy()


def _agree_width(local: np.ndarray | None) -> int:
    t = torch.tensor([0 if local is None else local.shape[1]], dtype=torch.int64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


class SyncedBudget(Budget):
    """A budget whose `left()` is rank 0's on every rank: all ranks stop at the same step."""

    def left(self) -> float:
        return agree(super().left())


def synced(budget: Budget) -> Budget:
    """`budget` as a SyncedBudget when distributed (the loop's decisions must agree)."""
    if not active() or isinstance(budget, SyncedBudget):
        return budget
    return SyncedBudget(budget.seconds, budget.start)


if __name__ == "__main__":
    sys.exit(main())
