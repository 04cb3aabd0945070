"""The training loop: learns, respects its budget, keeps the best epoch, weights classes."""

import json

import numpy as np
import pytest
import torch

from sightwise.config import TrainConfig
from sightwise.data.preprocess import Preprocessing
from sightwise.models.classifier import build_classifier
from sightwise.train.budget import Budget
from sightwise.train.finetune import class_weights, evaluate_logits, fit


def _toy(n_per_class=24, size=32, seed=0):
    """Two classes told apart by brightness of the left half."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 80, (2 * n_per_class, size, size, 3)).astype(np.uint8)
    y = np.repeat([0, 1], n_per_class)
    x[y == 1, :, : size // 2] += 150
    return x, y


def test_scratch_learns_a_simple_rule_and_keeps_best_epoch(tmp_path):
    x, y = _toy()
    xv, yv = _toy(8, seed=1)
    # Seeded here: the initial weights must not depend on what other tests drew before. At
    # batch 16 for 4 epochs (12 steps) 3 of 5 seeds still predicted one class; batch 8 for 6
    # epochs learned the rule for all 5.
    torch.manual_seed(0)
    cfg = TrainConfig(data="-", out=str(tmp_path), epochs=6, batch_size=8, augment="none",
                      progress=False, patience=10)
    model = build_classifier("small_resnet", 2, pretrained=False)
    pre = Preprocessing(size=32, interpolation="bilinear")
    res = fit(model, (x, y), (xv, yv), pre, cfg, Budget(None), lr=3e-3, head_lr=3e-3)
    assert res.epochs_run == 6
    assert res.best_val_accuracy >= 0.9
    best = max(res.history, key=lambda h: h["val_accuracy"])
    assert res.best_val_accuracy == best["val_accuracy"]
    acc = (evaluate_logits(model, xv, pre).argmax(1) == yv).mean()
    assert acc == pytest.approx(res.best_val_accuracy)  # the best weights were restored
    json.dumps(res.history)


def test_budget_stops_training(tmp_path):
    """A budget clock that advances 0.1 s per look runs out after about 20 looks, on any
    machine; training must stop there, not at its 50 epochs."""
    x, y = _toy(64)
    cfg = TrainConfig(data="-", out=str(tmp_path), epochs=50, batch_size=8, patience=100,
                      progress=False)
    model = build_classifier("small_resnet", 2, pretrained=False)
    looks = iter(range(10**6))
    budget = Budget(2.0, clock=lambda: 0.1 * next(looks))
    res = fit(model, (x, y), (x[:8], y[:8]), Preprocessing(size=32), cfg, budget,
              lr=1e-3, head_lr=1e-3)
    assert res.stopped_by == "budget"
    assert 1 <= res.epochs_run <= 3  # the plan (from the timed first epoch) may end it sooner


def test_a_budget_planned_schedule_equals_the_same_epochs_without_a_budget(tmp_path, monkeypatch):
    # The plan (made after the timed first epoch) shortens the cosine schedule to whole
    # epochs: a run planned to 3 of 10 epochs trains exactly like an unbudgeted 3-epoch run.
    from sightwise.train import finetune

    x, y = _toy()
    xv, yv = _toy(8, seed=1)
    pre = Preprocessing(size=32)

    def run(epochs, budget):
        torch.manual_seed(0)
        model = build_classifier("small_resnet", 2, pretrained=False)
        cfg = TrainConfig(data="-", out=str(tmp_path), epochs=epochs, batch_size=8,
                          progress=False, patience=10)
        return model, fit(model, (x, y), (xv, yv), pre, cfg, budget, lr=3e-3, head_lr=3e-3)

    monkeypatch.setattr(finetune, "plan_epochs", lambda left, sec, *, done, cap: 3)
    planned, res = run(10, Budget(3600.0))
    assert (res.planned_epochs, res.epochs_run, res.stopped_by) == (3, 3, "budget")
    plain, ref = run(3, Budget(None))
    assert (ref.planned_epochs, ref.stopped_by) == (3, "epochs")
    assert [h["val_loss"] for h in res.history] == pytest.approx([h["val_loss"] for h in ref.history])
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(planned.state_dict()[k], v, rtol=0, atol=1e-6)


def test_a_plan_with_no_whole_epoch_left_fits_the_cosine_to_the_remaining_steps(tmp_path, monkeypatch):
    # Only the timed first epoch fits: instead of ending at the warm-up's peak learning rate,
    # the step-level plan shortens the schedule to what the budget still holds.
    from sightwise.train import finetune

    x, y = _toy(64)
    monkeypatch.setattr(finetune, "plan_epochs", lambda left, sec, *, done, cap: 1)
    seen = []
    monkeypatch.setattr(finetune, "_plan", lambda *a: seen.append(a) or (24, 2, 2))
    cfg = TrainConfig(data="-", out=str(tmp_path), epochs=10, batch_size=8, progress=False,
                      augment="none")
    res = fit(build_classifier("small_resnet", 2, pretrained=False), (x, y), (x[:8], y[:8]),
              Preprocessing(size=32), cfg, Budget(3600.0), lr=1e-3, head_lr=1e-3)
    assert len(seen) == 1 and res.planned_epochs == 2  # ceil(24 steps / 16 per epoch)
    assert res.epochs_run == 2 and res.stopped_by == "budget"
    assert res.history[1]["seconds"] < res.history[0]["seconds"]  # 8 steps, not 16


def test_plan_epochs_rounds_down_to_the_grid():
    from sightwise.train.finetune import plan_epochs

    # 1 done + 18.9 s / 1 s = 19 fit -> 15; plans under 2 grids are not rounded; cap wins
    assert plan_epochs(18.9, 1.0, done=1, cap=30, grid=5) == 15
    assert plan_epochs(8.5, 1.0, done=1, cap=30, grid=5) == 9
    assert plan_epochs(2.5, 1.0, done=1, cap=30, grid=5) == 3
    assert plan_epochs(0.1, 1.0, done=1, cap=30, grid=5) == 1
    assert plan_epochs(1e6, 1.0, done=1, cap=30, grid=5) == 30
    # a few percent of speed either side of 22 epochs gives the same plan
    assert {plan_epochs(190.0, s, done=1, cap=30) for s in (8.2, 8.6, 9.0)} == {20}


def test_class_weights_inverse_frequency_above_3_to_1():
    y = np.array([0] * 80 + [1] * 20)
    assert class_weights(y, 2, "auto") is not None
    w = class_weights(y, 2, "auto").numpy()
    # Weighted, each class contributes the same total to the loss.
    assert w[0] * 80 == pytest.approx(w[1] * 20)
    assert class_weights(np.array([0] * 30 + [1] * 20), 2, "auto") is None
    assert class_weights(np.array([0] * 30 + [1] * 20), 2, "weighted") is not None
    assert class_weights(y, 2, "none") is None
    assert torch.is_tensor(class_weights(y, 2, "weighted"))


def test_ema_weights_are_validated_and_kept(tmp_path, monkeypatch):
    """With ema_decay the run keeps timm's moving average (updated once per optimiser step),
    not the raw last weights."""
    import copy

    import sightwise.train.finetune as ft

    seen = {}

    class Recorder(ft.ModelEmaV3):
        def update(self, model, step=None):
            super().update(model, step=step)
            seen.setdefault("steps", []).append(step)
            seen["raw"] = copy.deepcopy(model.state_dict())
            seen["ema"] = self

    monkeypatch.setattr(ft, "ModelEmaV3", Recorder)
    x, y = _toy()
    cfg = TrainConfig(data="-", out=str(tmp_path), epochs=1, batch_size=16, augment="none",
                      progress=False, ema_decay=0.9)
    model = build_classifier("small_resnet", 2, pretrained=False)
    fit(model, (x, y), _toy(8, seed=1), Preprocessing(size=32), cfg, Budget(None),
        lr=3e-3, head_lr=3e-3)
    assert seen["steps"] == [0, 1, 2]  # 48 images, batch 16
    final, ema, raw = model.state_dict(), seen["ema"].module.state_dict(), seen["raw"]
    assert all(torch.equal(final[k], ema[k]) for k in final)
    assert any(not torch.equal(final[k], raw[k]) for k in final if final[k].is_floating_point())
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(data="-", out="-", ema_decay=1.0)


def test_fused_optimiser_matches_pytorch_default_adamw():
    """make_optimizer's fused AdamW takes the same steps as torch.optim.AdamW's default
    (for-each/loop) implementation, head in its own learning-rate group."""
    from sightwise.train.finetune import make_optimizer

    torch.manual_seed(0)
    ours = build_classifier("small_resnet", 3, pretrained=False)
    ref = build_classifier("small_resnet", 3, pretrained=False)
    ref.load_state_dict(ours.state_dict())
    ours.eval(), ref.eval()  # no dropout draws: both see the same gradients
    opt = make_optimizer(ours, lr=1e-3, head_lr=1e-2, weight_decay=0.05)
    head = {id(p) for p in ref.head.parameters()}
    ref_opt = torch.optim.AdamW(
        [{"params": [p for p in ref.parameters() if id(p) not in head], "lr": 1e-3},
         {"params": list(ref.head.parameters()), "lr": 1e-2}], weight_decay=0.05, fused=False)
    assert opt.defaults["fused"] and not ref_opt.defaults["fused"]
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    for _ in range(3):
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            o.step()
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
