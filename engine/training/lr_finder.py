"""A learning-rate range test (Leslie Smith; fastai's ``lr_find``) as a callback on the real training step.

:func:`find_lr` prepares the run exactly as :func:`engine.training.runner.train`
would (data, model, freeze policy, head warm-up, param groups with their relative
LRs, grad scaler, augmentation) and drives the same ``train_one_epoch`` with an
exponential LR schedule; :class:`LRFinder` records the loss of every step,
smooths it with a bias-corrected moving average and stops the sweep once it
exceeds ``diverge`` times its minimum. Suggestion (:func:`suggest_lr`): the LR at
the steepest descent of the smoothed loss, or min-loss LR / 10 when the steepest
point lies past the minimum. The linear probe has no learning rate (it is fitted
to convergence), so the sweep is for the fine-tune modes.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from engine import workspace
from engine.errors import UserError
from engine.training.callbacks import Callback, CancelledByUser
from engine.training.config import TrainConfig
from engine.training.freeze import param_groups
from engine.training.loop import LoopState, train_one_epoch
from engine.training.runner import fit_head, prepare

__all__ = ["LRFinder", "find_lr", "suggest_lr", "lr_find_folder", "LR_RANGE"]

# The range swept, and so the range a suggestion (and the Train page's learning-rate input) can take.
LR_RANGE = (1e-7, 1.0)


def suggest_lr(lrs: list[float], losses: list[float]) -> dict:
    """Steepest-descent LR and min-loss/10 LR of a smoothed loss curve."""
    if len(lrs) < 5:
        raise UserError("the LR sweep stopped too early to suggest anything; try a smaller start LR")
    log_lrs = np.log10(np.asarray(lrs))
    loss = np.asarray(losses)
    grads = np.gradient(loss, log_lrs)
    skip = max(1, len(lrs) // 10)  # the first steps are noise from the EMA warming up
    steepest = float(lrs[skip + int(np.argmin(grads[skip:]))]) if len(lrs) > skip + 1 else float(lrs[0])
    min_div10 = float(lrs[int(np.argmin(loss))]) / 10
    # Steepest descent, unless that point lies past the loss minimum (then min/10).
    suggested = steepest if steepest <= min_div10 * 10 else min_div10
    # A curve that only rises (a warm-started head) has its minimum at the first LR: stay in the range swept.
    suggested = max(suggested, float(lrs[0]))
    return {"steepest": steepest, "min_div10": min_div10, "suggested_lr": suggested}


class LRFinder(Callback):
    """Records (lr, smoothed loss) per training step; asks the loop to stop on divergence."""

    def __init__(self, optimizer, steps: int, smoothing: float = 0.98, diverge: float = 4.0):
        self.optimizer, self.steps, self.smoothing, self.diverge = optimizer, steps, smoothing, diverge
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self._avg, self._best, self._stop = 0.0, math.inf, False

    def on_batch_end(self, loss: float) -> None:
        if not math.isfinite(loss):
            self._stop = True
            return
        self._avg = self.smoothing * self._avg + (1 - self.smoothing) * loss
        smoothed = self._avg / (1 - self.smoothing ** (len(self.lrs) + 1))  # bias correction, as in fastai
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        self.losses.append(smoothed)
        self._best = min(self._best, smoothed)
        if len(self.lrs) >= self.steps or (len(self.lrs) > 5 and smoothed > self.diverge * self._best):
            self._stop = True

    def should_stop(self) -> bool:
        return self._stop


def find_lr(config: TrainConfig, steps: int = 100, start_lr: float = LR_RANGE[0], end_lr: float = LR_RANGE[1],
            smoothing: float = 0.98, diverge: float = 4.0) -> dict:
    """Sweep the LR on ``config``'s setup; returns ``{"lrs", "losses", "suggested_lr", ...}``."""
    if not 0 < start_lr < end_lr:
        raise UserError("the LR sweep needs 0 < start LR < end LR")
    if config.mode == "linear":
        raise UserError("the linear probe is fitted to convergence and has no learning rate to find; "
                        "the LR finder is for the fine-tune modes")
    p = prepare(config)
    assert p.images_train is not None  # a fine-tune mode decodes its images (only the probe reads features)
    if config.mode in ("partial", "gradual", "full") and config.head_warmup:
        fit_head(p, Callback())  # the sweep starts where training starts
    model, setup, spec = p.model, p.setup, p.spec
    # The head's LR is the one swept; every group keeps its ratio to it (layer-wise decay).
    optimizer = torch.optim.AdamW(param_groups(model, start_lr, config.backbone_lr_mult, config.weight_decay,
                                               config.mode, layer_decay=config.layer_decay), lr=start_lr)
    gamma = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
    scaler = torch.amp.GradScaler("cuda") if setup.needs_scaler() else None
    finder = LRFinder(optimizer, steps, smoothing, diverge)
    generator = torch.Generator().manual_seed(config.seed)
    aug_generator = torch.Generator(device=setup.device).manual_seed(config.seed + 1)
    batch_size = min(config.batch_size, len(p.y_train))
    loop = LoopState(optimizer, scheduler, p.loss_fn, setup, spec.mean, spec.std, generator, aug_generator, scaler,
                     callback=finder, sample_weights=p.sample_weights)
    try:
        while True:  # as many epochs as the sweep needs
            train_one_epoch(model, p.images_train, p.y_train, replace(config, batch_size=batch_size), loop)
    except CancelledByUser:
        pass
    result = {"lrs": finder.lrs, "losses": finder.losses, **suggest_lr(finder.lrs, finder.losses)}
    result.update({"mode": config.mode, "backbone": config.backbone, "steps": len(finder.lrs)})
    return result


def lr_find_folder(config: TrainConfig) -> Path:
    """Where the sweep for this setup lives; the same setup reuses its curve."""
    ignored = ("lr", "epochs", "patience", "threads", "compile", "nproc")  # do not change the sweep
    material = json.dumps({k: v for k, v in config.to_dict().items() if k not in ignored}, sort_keys=True, default=str)
    return workspace.workspace_root() / "lr-find" / hashlib.sha256(material.encode()).hexdigest()[:16]


