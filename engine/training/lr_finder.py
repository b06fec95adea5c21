"""A learning-rate range test (Leslie Smith; fastai's ``lr_find``), run before training.

The LR grows exponentially from ``start_lr`` to ``end_lr`` over ``steps`` batches
of the real training setup (same model, freeze policy, augmentation and param
groups, whose relative LRs are kept). The loss is smoothed with an exponential
moving average; the sweep stops once it exceeds 4x its minimum. Suggestion: the
LR at the steepest descent of the smoothed loss (min-loss LR / 10 when the steepest
point lies past the minimum); both of fastai's classic rules are returned.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from engine import workspace
from engine.background import start_task
from engine.errors import UserError
from engine.training.augment import augment_batch, normalize
from engine.training.config import TrainConfig
from engine.training.freeze import param_groups, set_train_mode
from engine.training.loop import extract_features
from engine.training.runner import prepare

__all__ = ["find_lr", "suggest_lr", "lr_find_folder", "start_lr_find"]


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
    return {"steepest": steepest, "min_div10": min_div10, "suggested_lr": suggested}


def find_lr(config: TrainConfig, steps: int = 100, start_lr: float = 1e-7, end_lr: float = 1.0,
            smoothing: float = 0.98, diverge: float = 4.0) -> dict:
    """Sweep the LR on ``config``'s setup; returns ``{"lrs", "losses", "suggested_lr", ...}``."""
    if not 0 < start_lr < end_lr:
        raise UserError("the LR sweep needs 0 < start LR < end LR")
    p = prepare(config)
    model, setup, spec = p.model, p.setup, p.spec
    groups = param_groups(model, 1.0, config.backbone_lr_mult, config.weight_decay, config.mode,
                          layer_decay=config.layer_decay)
    ratios = [g["lr"] for g in groups]  # relative LR of each group (head = 1)
    optimizer = torch.optim.AdamW(groups, lr=start_lr)
    generator = torch.Generator().manual_seed(config.seed)
    aug_generator = torch.Generator(device=setup.device).manual_seed(config.seed + 1)
    linear = config.mode == "linear"
    if linear:
        data = extract_features(model, p.images_train, setup=setup, batch_size=config.batch_size,
                                mean=spec.mean, std=spec.std)
    else:
        data = p.images_train
    n = len(p.y_train)
    batch = min(config.batch_size, n)
    gamma = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    lrs, losses = [], []
    avg, best = 0.0, math.inf
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for step in range(steps):
        lr = start_lr * gamma**step
        for g, r in zip(optimizer.param_groups, ratios):
            g["lr"] = lr * r
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor : cursor + batch].to(data.device)
        cursor += batch
        y = p.y_train[idx]
        if linear:
            model.head.train()
            logits = model.head(model.dropout(data[idx]))
        else:
            set_train_mode(model)
            x = setup.prepare(normalize(augment_batch(data[idx], config.augment, aug_generator), spec.mean, spec.std))
            with setup.autocast():
                logits = model(x)
        loss = p.loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            break
        avg = smoothing * avg + (1 - smoothing) * value
        smoothed = avg / (1 - smoothing ** (step + 1))  # bias correction, as in fastai
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if step > 5 and smoothed > diverge * best:
            break
    result = {"lrs": lrs, "losses": losses, **suggest_lr(lrs, losses)}
    result.update({"mode": config.mode, "backbone": config.backbone, "steps": len(lrs)})
    return result


def lr_find_folder(config: TrainConfig) -> Path:
    """Where the sweep for this setup lives; the same setup reuses its curve."""
    keys = ("dataset", "backbone", "mode", "image_size", "batch_size", "augment", "val_fraction", "seed",
            "unfreeze_stages", "layer_decay")
    material = json.dumps({k: getattr(config, k) for k in keys}, sort_keys=True, default=str)
    return workspace.home() / "lr-find" / hashlib.sha256(material.encode()).hexdigest()[:16]


def start_lr_find(config: TrainConfig, steps: int = 100) -> tuple[Path, dict]:
    """Run the sweep in its own process (pages must not train); poll with ``task_state``."""
    folder = lr_find_folder(config)
    argv = ["lr-find", str(config.dataset), "--backbone", config.backbone, "--mode", config.mode,
            "--batch-size", str(config.batch_size), "--augment", config.augment, "--seed", str(config.seed),
            "--val-fraction", str(config.val_fraction), "--unfreeze-stages", str(config.unfreeze_stages),
            "--layer-decay", str(config.layer_decay),
            "--steps", str(steps), "--out", str(folder / "result.json")]
    if config.image_size:
        argv += ["--image-size", str(config.image_size)]
    return folder, start_task(folder, argv)
