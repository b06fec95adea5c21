"""The fine-tuning recipe: freeze policy, layer-wise LRs, augmentation, resume, reproducibility."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.errors import UserError
from engine.models import create_model
from engine.runs import new_run
from engine.training.augment import augment_batch, mix_batch
from engine.training.callbacks import Callback, CancelledByUser
from engine.training.config import TrainConfig
from engine.training.freeze import apply_freeze_policy, param_groups, trainable_stages
from engine.device import resolve_device
from engine.training.loop import LoopState, train_one_epoch
from engine.training.lr_finder import find_lr
from engine.training.runner import resume, train

CURVE_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


def _model():
    torch.manual_seed(0)
    return create_model("mobilenet_v2", 3, pretrained=False, image_size=32)


@pytest.mark.slow
def test_frozen_batchnorm_stats_survive_a_partial_epoch():
    model = _model()
    apply_freeze_policy(model, "partial", unfreeze_stages=2)
    frozen_bn = [m for s in model.frozen_stages for m in s.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    open_bn = [m for s in model.stages()[-2:] for m in s.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert frozen_bn and open_bn
    before = [m.running_mean.clone() for m in frozen_bn]
    before_open = [m.running_mean.clone() for m in open_bn]
    frozen_w = [p.clone() for s in model.frozen_stages for p in s.parameters()]
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 3, (24,))
    opt = torch.optim.AdamW(param_groups(model, 1e-2, 0.1, 0.0, "partial"))
    config = TrainConfig(dataset="unused", mode="partial", batch_size=8, augment="light", freeze_norm=False)
    state = LoopState(opt, None, torch.nn.CrossEntropyLoss(), resolve_device("cpu"), (0.5,) * 3, (0.25,) * 3,
                      torch.Generator().manual_seed(0))
    train_one_epoch(model, images, labels, config, state, max_steps=2)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, frozen_bn))
    assert all(torch.equal(a, b) for a, b in zip(frozen_w, [p for s in model.frozen_stages for p in s.parameters()]))
    # ...while the trainable stages' statistics did move (so the check above can fail).
    assert any(not torch.equal(a, m.running_mean) for a, m in zip(before_open, open_bn))


def test_layerwise_lr_decays_towards_the_input():
    model = _model()
    apply_freeze_policy(model, "full")
    groups = param_groups(model, 1e-3, 0.1, 1e-4, "full", layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    stages = model.stages()
    first, last = next(stages[0].parameters()), next(stages[-1].parameters())
    assert lr_of[id(next(model.head.parameters()))] == pytest.approx(1e-3)
    assert lr_of[id(last)] == pytest.approx(1e-4)
    assert lr_of[id(first)] == pytest.approx(1e-4 * 0.5 ** (len(stages) - 1))
    # every parameter in exactly one group
    assert len(lr_of) == sum(1 for _ in model.parameters())
    scratch = param_groups(model, 1e-3, 0.1, 1e-4, "scratch", layer_decay=0.5)
    assert {g["lr"] for g in scratch} == {1e-3}


def test_gradual_unfreezing_opens_one_stage_per_epoch():
    model = _model()
    n = len(model.stages())
    opened = []
    for epoch in range(4):
        apply_freeze_policy(model, "gradual", epoch=epoch)
        trainable = [any(p.requires_grad for p in s.parameters()) for s in model.stages()]
        opened.append(sum(trainable))
        assert trainable == [False] * (n - opened[-1]) + [True] * opened[-1]
        assert all(p.requires_grad for p in model.head.parameters())
    assert opened == [0, 1, 2, 3]
    assert trainable_stages(model, "gradual", epoch=1000) == n
    assert trainable_stages(model, "gradual", epoch=3, every=2) == 1


def test_strong_augmentation_and_mix_shapes():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    out = augment_batch(images, "strong", torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    for mode in ("mixup", "cutmix", "both"):
        x, y = mix_batch(out, torch.tensor([0, 1, 2, 0, 1, 2]), mode, 3, alpha=0.4)
        assert x.shape == out.shape and y.shape == (6, 3)
        assert torch.allclose(y.sum(1), torch.ones(6))


def test_bad_recipe_values_are_user_errors(shapes_dir):
    for bad in ({"mix": "blend"}, {"layer_decay": 0}, {"patience": 0}, {"mode": "frozen"}, {"nproc": 0}):
        with pytest.raises(UserError):
            TrainConfig(dataset=str(shapes_dir), **bad)


def _cfg(shapes_dir, **kw):
    base = dict(dataset=str(shapes_dir), mode="full", epochs=3, image_size=32, batch_size=8, augment="strong",
                mix="mixup", threads=1)
    return TrainConfig(**(base | kw))


def _curves(run):
    return [{k: m[k] for k in CURVE_KEYS} for m in run.metrics()]


@pytest.mark.slow
def test_same_config_same_metrics_and_resume_matches_uninterrupted(shapes_dir):
    """Two runs of one config agree exactly; a run stopped after epoch 1 and resumed
    from last.pt (model, optimiser, scheduler, RNG state) lands on the same numbers."""
    config = _cfg(shapes_dir)
    first, second = new_run("repro-a"), new_run("repro-b")
    train(config, first)
    train(config, second)
    assert len(first.metrics()) == 3
    assert _curves(first) == _curves(second)

    class StopAfterFirstEpoch(Callback):
        done = False

        def on_epoch_end(self, record):
            self.done = True

        def should_stop(self):
            return self.done

    third = new_run("repro-c")
    third.write_config(config.to_dict())
    with pytest.raises(CancelledByUser):
        train(config, third, callbacks=[StopAfterFirstEpoch()])
    assert third.status()["state"] == "cancelled"
    assert len(third.metrics()) == 1
    blob = torch.load(third.last_checkpoint, weights_only=True)
    state = blob["training_state"]
    assert blob["epoch"] == state["epoch"] == 1 and {"optimizer", "scheduler", "rng", "early_stopping"} <= set(state)
    resume(third)
    assert third.status()["state"] == "done"
    assert _curves(third) == _curves(first)
    assert json.loads(third.eval_file.read_text())["accuracy"] == first.evaluation()["accuracy"]


@pytest.mark.slow
def test_resume_refuses_a_finished_run(shapes_dir):
    run = new_run("done-run")
    train(_cfg(shapes_dir, mode="linear", epochs=2, mix="none"), run)
    with pytest.raises(UserError, match="already finished"):
        resume(run)


@pytest.mark.slow
def test_early_stopping_keeps_the_best_checkpoint(shapes_dir):
    # An LR far too high makes validation loss worse after the first epochs.
    run = new_run("early")
    train(_cfg(shapes_dir, mode="partial", unfreeze_stages=1, epochs=30, lr=9.0, patience=2, mix="none",
               warmup_epochs=0, augment="none"), run)
    metrics = run.metrics()
    assert len(metrics) < 30
    status = run.status()
    assert status["state"] == "done" and status["stopped_early"] == len(metrics)
    best = min(metrics, key=lambda m: m["val_loss"])
    assert torch.load(run.best_checkpoint, weights_only=True)["epoch"] == best["epoch"]
    assert all(m["val_loss"] >= best["val_loss"] for m in metrics[best["epoch"]:])
    assert len(metrics) - best["epoch"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "partial"])
def test_lr_finder_returns_a_curve_and_a_suggestion(shapes_dir, mode):
    result = find_lr(_cfg(shapes_dir, mode=mode, mix="none", augment="light"), steps=30, start_lr=1e-6, end_lr=10)
    assert set(result) >= {"lrs", "losses", "suggested_lr", "steepest", "min_div10"}
    assert len(result["lrs"]) == len(result["losses"]) >= 5
    assert result["lrs"] == sorted(result["lrs"])
    assert result["lrs"][0] <= result["suggested_lr"] <= result["lrs"][-1]


def test_lr_suggestion_rule_on_a_synthetic_curve():
    from engine.training.lr_finder import suggest_lr

    lrs = list(np.logspace(-6, 0, 61))
    x = np.log10(lrs)
    # Flat, then falling fastest at 1e-3, bottoming out at 1e-2, then diverging.
    losses = list(2.0 - 1.0 / (1 + np.exp(-(x + 3) * 4)) + np.where(x > -2, (x + 2) ** 2 * 3, 0))
    out = suggest_lr(lrs, losses)
    assert 10 ** -3.2 <= out["steepest"] <= 10 ** -2.8
    assert out["suggested_lr"] == out["steepest"]
    with pytest.raises(UserError):
        suggest_lr(lrs[:3], losses[:3])


def test_linear_probe_has_no_lr_to_find(shapes_dir):
    with pytest.raises(UserError, match="no learning rate"):
        find_lr(_cfg(shapes_dir, mode="linear"), steps=10)


def test_validation_every_follows_the_split_sizes():
    from engine.training.runner import validation_every

    cfg = TrainConfig(dataset="x", mode="full")
    assert validation_every(cfg, num_train=800, num_val=200) == 1  # an 80/20 split: every epoch
    assert validation_every(cfg, num_train=1000, num_val=500) == 2  # a third held out: every other epoch
    assert validation_every(cfg, num_train=100, num_val=500) == 17  # few-shot (val/ 5x train/): after the last
    assert validation_every(TrainConfig(dataset="x", mode="full", val_every=2), 100, 500) == 2
    with pytest.raises(UserError, match="val_every"):
        TrainConfig(dataset="x", val_every=0)


@pytest.mark.slow
def test_skipped_validation_epochs_and_the_final_report_agree(shapes_dir):
    # Validated on epochs 2 and 3 only; the report's validation figures are the best validated epoch's.
    run = new_run("val-every")
    report = train(_cfg(shapes_dir, epochs=3, val_every=2, mix="none"), run)
    metrics = run.metrics()
    assert [("val_loss" in m) for m in metrics] == [False, True, True]
    best = min(metrics[1:], key=lambda m: m["val_loss"])
    assert torch.load(run.best_checkpoint, weights_only=True)["epoch"] == best["epoch"] == report["best_epoch"]
    assert report["accuracy"] == pytest.approx(best["val_acc"])


def test_patience_counts_epochs_when_validation_skips_some():
    from engine.training.state import EarlyStopping

    early = EarlyStopping(patience=3)
    assert early.update(1.0, epochs=2)  # validated every other epoch (val_every 2)
    assert not early.update(1.1, epochs=2) and not early.stop  # 2 epochs without a better loss
    assert not early.update(1.2, epochs=2) and early.stop  # 4 >= 3: two validations, four epochs
    every_epoch = EarlyStopping(patience=3)
    for loss in (1.0, 1.1, 1.2):
        every_epoch.update(loss)
    assert not every_epoch.stop  # 2 epochs
    every_epoch.update(1.3)
    assert every_epoch.stop
