"""The loop: plain functions in the style of torchvision's classification reference.

Data arrives as uint8 tensors already on the training device; batches are
sliced, augmented and normalised there. The same functions run on CPU and GPU,
so the GPU paths (autocast, channels_last) are exercised by the CPU tests too.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from engine.device import DeviceSetup
from engine.models.factory import TransferModel
from engine.training.augment import augment_batch, normalize
from engine.training.callbacks import Callback, CancelledByUser
from engine.training.config import TrainConfig
from engine.training.distributed import DistContext
from engine.training.freeze import set_train_mode

__all__ = ["unwrap", "LoopState", "train_one_epoch", "evaluate", "backbone_features", "clean_batches"]


def unwrap(model: nn.Module) -> nn.Module:
    """The TransferModel inside torch.compile / DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = cast(nn.Module, model._orig_mod)
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _batches(n: int, batch_size: int, generator: torch.Generator | None, shuffle: bool, drop_last: bool,
             sample_weights: torch.Tensor | None = None):
    if sample_weights is not None:  # class-balanced draws, with replacement
        order = torch.multinomial(sample_weights, n, replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


Mix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LoopState:
    """What the epoch loop works with besides the config: built once per run, reused every epoch.

    ``mix(x, y) -> (x, soft_y)`` is MixUp/CutMix; ``dist_ctx`` shards every global batch across
    ranks; ``sample_weights`` (per image) draws batches with replacement in proportion to them
    (the class-balanced sampler); ``mean``/``std`` are the backbone's normalisation.
    """
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    loss_fn: nn.Module
    setup: DeviceSetup
    mean: tuple[float, ...]
    std: tuple[float, ...]
    generator: torch.Generator
    aug_generator: torch.Generator | None = None
    scaler: torch.amp.GradScaler | None = None
    callback: Callback | None = None
    mix: Mix | None = None
    dist_ctx: DistContext | None = None
    sample_weights: torch.Tensor | None = None


def train_one_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
                    state: LoopState, max_steps: int | None = None) -> dict:
    """One epoch over ``images`` at ``config``'s batch size and augmentation. ``model`` may be a
    DDP/compiled wrapper around a TransferModel. Batch-norm statistics stay fixed unless the
    config trains them (``freeze_norm``; scratch mode always trains them: see ``set_train_mode``)."""
    setup, callback, dist_ctx, batch_size = state.setup, state.callback, state.dist_ctx, config.batch_size
    set_train_mode(cast(TransferModel, unwrap(model)), freeze_norm=config.freeze_norm and config.mode != "scratch")
    # Sums stay on the device: one .item() per step would make the host wait for every step on a GPU.
    total_loss = torch.zeros((), device=setup.device)
    correct = torch.zeros((), device=setup.device, dtype=torch.long)
    seen = 0
    steps = max(1, len(labels) // batch_size) if len(labels) >= batch_size else 1
    if max_steps is not None:
        steps = min(steps, max_steps)
    order = _batches(len(labels), batch_size, state.generator, shuffle=True, drop_last=True,
                     sample_weights=state.sample_weights)
    for step, idx in enumerate(order):
        if step >= steps:
            break
        if dist_ctx is not None:
            idx = dist_ctx.shard(idx)
        # A split too large for the device stays in host memory (or on disk, memory-mapped): copy each batch over.
        idx = idx.to(images.device)
        x = augment_batch(images[idx].to(setup.device, non_blocking=True), config.augment, state.aug_generator)
        y = labels[idx]
        target = y
        if state.mix is not None:
            x, target = state.mix(x, y)
        x = setup.prepare(normalize(x, state.mean, state.std))
        with setup.autocast():
            logits = model(x)
            loss = state.loss_fn(logits.float(), target)
        state.optimizer.zero_grad(set_to_none=True)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            loss.backward()
            state.optimizer.step()
        if state.scheduler is not None:
            state.scheduler.step()
        loss = loss.detach()
        total_loss += loss * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        stop = False
        if callback is not None:
            callback.on_batch_end(loss.item())
            callback.on_progress(step + 1, steps, "train")
            stop = callback.should_stop()
        if dist_ctx is not None:
            stop = dist_ctx.any(stop)  # every rank leaves at the same step, or DDP hangs
        if stop:
            raise CancelledByUser()
    sums = [total_loss.item(), float(correct.item()), float(seen)]
    if dist_ctx is not None:
        sums = dist_ctx.mean(sums)
    return {"train_loss": sums[0] / max(sums[2], 1), "train_acc": sums[1] / max(sums[2], 1)}


def clean_batches(images: torch.Tensor, *, setup: DeviceSetup, batch_size: int, mean, std):
    """``images`` in order, normalised and un-augmented, one device batch at a time."""
    for idx in _batches(len(images), batch_size, None, shuffle=False, drop_last=False):
        yield setup.prepare(normalize(images[idx.to(images.device)].to(setup.device, non_blocking=True), mean, std))


@torch.no_grad()
def backbone_features(model: nn.Module, images: torch.Tensor, *, setup: DeviceSetup, batch_size: int, mean,
                      std) -> torch.Tensor:
    """The pooled backbone features of un-augmented ``images`` (eval mode), as float on the CPU:
    what the head warm-up fits on when the backbone is no longer the pretrained one (adapted norms)."""
    net = cast(TransferModel, unwrap(model))
    net.eval()
    out = []
    for x in clean_batches(images, setup=setup, batch_size=batch_size * 2, mean=mean, std=std):
        with setup.autocast():
            out.append(net.backbone(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, setup: DeviceSetup,
             batch_size: int, mean, std) -> dict:
    model.eval()
    net = cast(TransferModel, unwrap(model))
    outputs, features = [], []
    for idx in _batches(len(labels), batch_size * 2, None, shuffle=False, drop_last=False):
        x = setup.prepare(normalize(images[idx.to(images.device)].to(setup.device, non_blocking=True), mean, std))
        with setup.autocast():
            pooled = net.forward_features(x)  # in eval mode head(features) is model(x): dropout is off
            outputs.append(net.head(pooled).float())
        features.append(pooled.float().cpu())
    logits = torch.cat(outputs) if outputs else torch.empty(0)
    loss = F.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    preds = logits.argmax(1)
    # The pooled features ride along so that the run's evaluation reuses this pass (``Run.val_outputs_file``).
    return {"val_loss": loss, "val_acc": (preds == labels).float().mean().item(), "logits": logits.cpu(),
            "preds": preds.cpu(), "features": torch.cat(features) if features else torch.empty(0)}
