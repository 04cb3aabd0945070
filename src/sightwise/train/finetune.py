"""The fine-tune / from-scratch training loop, top to bottom (nanoGPT's train.py style).

No callbacks and no string events: everything the loop does is visible here. It reads the
uint8 cache, augments per batch, trains channels_last with AdamW, a linear warm-up then a
cosine schedule and label smoothing, checks validation every epoch, keeps the best weights
and stops early or when the wall-clock budget cannot fit another epoch.

Under a budget the schedule is planned in whole epochs after the first one (timed, with
validation): as many as fit, from 10 on rounded down to a multiple of EPOCH_GRID, at most
`cfg.epochs`. Rounding keeps the plan, and so the trained weights, the same from run to
run when the machine's speed varies by a few percent; the log states the plan.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from tqdm.auto import tqdm

from sightwise.config import TrainConfig
from sightwise.core import is_imbalanced
from sightwise.data.preprocess import Preprocessing
from sightwise.train import distributed
from sightwise.train.allocator import keep_freed_memory
from sightwise.train.augment import augment_batch, make_augment, to_input
from sightwise.train.budget import Budget


@dataclass
class FitResult:
    best_val_accuracy: float
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    stopped_by: str = "epochs"
    images_per_second: float = 0.0
    planned_epochs: int = 0  # the schedule's length in epochs (cfg.epochs unless the budget cut it)


def set_trainable(model: nn.Module, unfreeze: str) -> None:
    """'all', or 'last-N': only the last N backbone stages (timm `blocks`) and the head."""
    for p in model.parameters():
        p.requires_grad = True
    if unfreeze == "all":
        return
    n = int(unfreeze.split("-")[1])
    stages = getattr(model.backbone, "blocks", None) or getattr(model.backbone, "stages", None)
    if stages is None:
        return
    for p in model.backbone.parameters():
        p.requires_grad = False
    tail = list(stages)[-n:] if n > 0 else []
    for mod in tail + [getattr(model.backbone, "conv_head", None), getattr(model.backbone, "bn2", None)]:
        if mod is not None:
            for p in mod.parameters():
                p.requires_grad = True


def class_weights(y: np.ndarray, num_classes: int, balance: str) -> torch.Tensor | None:
    """Inverse-frequency loss weights when asked, or by default above 3:1 imbalance."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    if balance == "none" or (balance == "auto" and not is_imbalanced(counts)):
        return None
    w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def make_optimizer(model: nn.Module, *, lr: float, head_lr: float,
                   weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable weights, the head in its own group (its own learning rate).

    fused=True: one kernel updates every tensor instead of PyTorch's default op-by-op loop
    over Lite0's ~200 weight tensors: 3.6 ms instead of 10 ms per step on this 2-core CPU
    (same update, to float rounding). Small next to a ~2 s step at batch 32 / 224 px, but free."""
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    return torch.optim.AdamW(
        [{"params": body_params, "lr": lr}, {"params": head_params, "lr": head_lr}],
        weight_decay=weight_decay, fused=True,
    )


def evaluate_logits(model: nn.Module, images: np.ndarray, pre: Preprocessing,
                    batch_size: int = 64) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = to_input(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])), pre)
            out.append(model(x.to(device)).float().cpu().numpy())
    return np.concatenate(out)


def fit(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    pre: Preprocessing,
    cfg: TrainConfig,
    budget: Budget,
    *,
    lr: float,
    head_lr: float,
    desc: str = "finetune",
    plan: bool = True,
) -> FitResult:
    """Train `model` in place and restore its best validation epoch. With `plan` and a
    bounded `budget` the schedule is fitted to the budget (module docstring); without
    `plan` it runs `cfg.epochs` and the budget only stops it."""
    x_train, y_train = train
    x_val, y_val = val
    budget = distributed.synced(budget)  # under DDP every rank reads rank 0's clock
    num_classes = model.head.out_features
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_amp = device.type == "cuda"
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    keep_freed_memory()  # each step reuses the last one's freed activations (allocator.py)

    model.to(device).to(memory_format=torch.channels_last)
    set_trainable(model, cfg.unfreeze)
    net = distributed.wrap(model, cfg.seed)  # DistributedDataParallel under torchrun, else model
    opt = make_optimizer(model, lr=lr, head_lr=head_lr, weight_decay=cfg.weight_decay)
    base_lrs = [lr, head_lr]
    weights = class_weights(y_train, num_classes, cfg.balance)
    loss_fn = nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device), label_smoothing=cfg.label_smoothing
    )
    aug = make_augment(pre.size, cfg.augment)
    steps_per_epoch = max(1, math.ceil(len(x_train) / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = max(1, int(cfg.warmup_epochs * steps_per_epoch))

    # With cfg.ema_decay, validation and the kept checkpoint use an exponential moving average
    # of the weights (timm's ModelEmaV3, decay warmed up so short runs still move it).
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema_decay > 0 else None
    judged = model if ema is None else ema.module
    best = FitResult(best_val_accuracy=-1.0, best_epoch=-1, epochs_run=0)
    best_state = copy.deepcopy(model.state_dict())
    best_val_loss = float("inf")
    stale, step, epoch_seconds, seen, t_train = 0, 0, None, 0, 0.0
    planned, step_planned = cfg.epochs, False
    t_fit = time.perf_counter()
    bar = tqdm(total=cfg.epochs, desc=desc, unit="epoch", disable=not cfg.progress)
    for epoch in range(cfg.epochs):
        if epoch >= planned:
            best.stopped_by = "budget"
            break
        if budget.left() <= 0:
            best.stopped_by = "budget"
            break
        t0 = time.perf_counter()
        model.train()
        if cfg.unfreeze != "all":
            _freeze_bn_stats(model)
        order = torch.randperm(len(x_train), generator=g).numpy()
        losses = []
        for i in range(0, len(order), cfg.batch_size):
            idx = distributed.shard(np.sort(order[i:i + cfg.batch_size]))  # this rank's rows
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            # warm-up then cosine (Loshchilov & Hutter 2017), per step
            scale = (step + 1) / warmup_steps if step < warmup_steps else 0.5 * (1 + math.cos(
                math.pi * min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))))
            for group, base in zip(opt.param_groups, base_lrs, strict=True):
                group["lr"] = base * scale
            xb = augment_batch(torch.from_numpy(x_train[idx]), aug)
            xb = to_input(xb, pre).to(device)
            yb = torch.from_numpy(y_train[idx]).to(device)
            with torch.autocast(device.type, enabled=use_amp):
                loss = loss_fn(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model, step=step)
            losses.append(loss.item())
            step += 1
            seen += len(idx)
            if (plan and epoch == 0 and step == min(PLAN_AFTER_STEPS, steps_per_epoch)
                    and budget.seconds is not None):
                per_step = distributed.agree((time.perf_counter() - t_fit) / step)
                if budget.left() < 2 * steps_per_epoch * per_step:
                    # Not even two epochs fit: fit the schedule to the steps that do.
                    total_steps, warmup_steps, planned = _plan(
                        budget, distributed.agree(time.perf_counter() - t_fit), step,
                        steps_per_epoch, cfg)
                    step_planned = True
            if budget.left() <= 0 or step >= total_steps:  # even mid-way through an epoch
                break
        t_train += time.perf_counter() - t0
        val_logits = distributed.evaluate(evaluate_logits, judged, x_val, pre)
        val_pred = val_logits.argmax(1)
        val_acc = float((val_pred == y_val).mean()) if len(y_val) else 0.0
        val_loss = float(nn.functional.cross_entropy(torch.from_numpy(val_logits),
                                                     torch.from_numpy(y_val)).item())
        epoch_seconds = distributed.agree(time.perf_counter() - t0)
        if plan and epoch == 0 and budget.seconds is not None and not step_planned:
            planned = plan_epochs(budget.left(), epoch_seconds * PLAN_MARGIN, done=1, cap=cfg.epochs)
            if planned >= 2:
                total_steps = planned * steps_per_epoch
                if warmup_steps > step:  # a warm-up still running ends an epoch before the plan
                    warmup_steps = min(warmup_steps, total_steps - steps_per_epoch)
            else:  # no whole epoch fits: fit the cosine to the steps that still do
                total_steps, warmup_steps, planned = _plan(
                    budget, distributed.agree(time.perf_counter() - t_fit), step, steps_per_epoch, cfg)
            bar.total = planned
        best.history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses or [0])),
                             "val_accuracy": val_acc, "val_loss": val_loss,
                             "seconds": epoch_seconds})
        best.epochs_run = epoch + 1
        improved = val_acc > best.best_val_accuracy or (
            val_acc == best.best_val_accuracy and val_loss < best_val_loss)
        if improved:
            best.best_val_accuracy, best.best_epoch, best_val_loss = val_acc, epoch + 1, val_loss
            best_state = copy.deepcopy(judged.state_dict())
            stale = 0
        else:
            stale += 1
        bar.set_postfix(loss=f"{np.mean(losses or [0]):.3f}", val_acc=f"{val_acc:.3f}",
                        budget_left=_fmt_left(budget))
        bar.update(1)
        if stale >= cfg.patience:
            best.stopped_by = "early-stopping"
            break
        if budget.left() <= 0:
            best.stopped_by = "budget"
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    best.images_per_second = distributed.total(seen) / t_train if t_train > 0 else 0.0
    best.planned_epochs = planned
    return best


# Budget-planned schedules of 2 * EPOCH_GRID epochs or more are a multiple of EPOCH_GRID.
EPOCH_GRID = 5
# The first epoch's time is taken 5 % longer when planning: later epochs may be a little
# slower, and a plan cut mid-epoch by the budget would end before the cosine has decayed.
PLAN_MARGIN = 1.05


def plan_epochs(seconds_left: float, epoch_seconds: float, *, done: int, cap: int,
                grid: int = EPOCH_GRID) -> int:
    """Epochs to schedule in all: `done` plus those the time left holds, at most `cap`;
    from 2 * `grid` epochs on, rounded down to a multiple of `grid` (below that the rounding
    would waste up to half the budget).

    >>> plan_epochs(190.0, 8.6, done=1, cap=30)  # 1 + 22 fit: 20
    20
    >>> plan_epochs(1000.0, 8.6, done=1, cap=30), plan_epochs(70.0, 8.6, done=1, cap=30)
    (30, 9)
    """
    fits = done + max(0, int(seconds_left / max(epoch_seconds, 1e-9)))
    if fits >= cap:
        return cap
    return fits // grid * grid if fits >= 2 * grid else fits


# Steps timed before the schedule is fitted to the budget (the first ones include warm-up
# costs of the allocator and kernels, so a handful, not one).
PLAN_AFTER_STEPS = 5


def _plan(budget: Budget, seconds: float, steps: int, steps_per_epoch: int,
          cfg: TrainConfig) -> tuple[int, int, int]:
    """Fit the cosine schedule to the steps the budget can hold, so the learning rate has
    decayed when time runs out instead of being cut off near its peak; warm-up is then at
    most a tenth of the run. Validation costs about a tenth of an epoch: leave room for it.
    Returns (total steps, warm-up steps, epochs they span)."""
    per_step = seconds / steps * 1.1
    fits = steps + int(budget.left() / per_step)
    total = max(steps + 1, min(cfg.epochs * steps_per_epoch, fits))
    warmup = max(1, min(int(cfg.warmup_epochs * steps_per_epoch), total // 10))
    return total, warmup, math.ceil(total / steps_per_epoch)


def _freeze_bn_stats(model: nn.Module) -> None:
    """Frozen layers keep their BatchNorm statistics too (else partial unfreezing drifts)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in m.parameters()):
            m.eval()


def _fmt_left(budget: Budget) -> str:
    left = budget.left()
    return "inf" if math.isinf(left) else f"{max(0, left):.0f}s"
