"""The loop: plain functions in the style of torchvision's classification reference.

Data arrives as uint8 tensors already on the training device; batches are
sliced, augmented and normalised there. The same functions run on CPU and GPU,
so the GPU paths (autocast, channels_last) are exercised by the CPU tests too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.device import DeviceSetup
from engine.training.augment import augment_batch, normalize
from engine.training.callbacks import Callback, CancelledByUser
from engine.training.freeze import set_train_mode

__all__ = ["unwrap", "train_one_epoch", "evaluate"]


def unwrap(model: nn.Module) -> nn.Module:
    """The TransferModel inside torch.compile / DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
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


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: nn.Module,
    setup: DeviceSetup,
    batch_size: int,
    augment: str,
    mean,
    std,
    generator: torch.Generator,
    aug_generator: torch.Generator | None = None,
    scaler: torch.amp.GradScaler | None = None,
    callback: Callback | None = None,
    mix=None,
    dist_ctx=None,
    max_steps: int | None = None,
    sample_weights: torch.Tensor | None = None,
    freeze_norm: bool = False,
) -> dict:
    """One epoch over ``images``. ``model`` may be a DDP/compiled wrapper around a
    TransferModel; ``dist_ctx`` shards every global batch of ``batch_size`` across ranks;
    ``mix(x, y) -> (x, soft_y)`` is MixUp/CutMix; ``sample_weights`` (per image) draws
    batches with replacement in proportion to them (the class-balanced sampler);
    ``freeze_norm`` keeps batch-norm statistics fixed (see ``set_train_mode``)."""
    set_train_mode(unwrap(model), freeze_norm=freeze_norm)
    total_loss, correct, seen = 0.0, 0, 0
    steps = max(1, len(labels) // batch_size) if len(labels) >= batch_size else 1
    if max_steps is not None:
        steps = min(steps, max_steps)
    for step, idx in enumerate(_batches(len(labels), batch_size, generator, shuffle=True, drop_last=True,
                                                  sample_weights=sample_weights)):
        if step >= steps:
            break
        if dist_ctx is not None:
            idx = dist_ctx.shard(idx)
        # A split too large for the device stays in host memory (or on disk, memory-mapped): copy each batch over.
        idx = idx.to(images.device)
        x = augment_batch(images[idx].to(setup.device, non_blocking=True), augment, aug_generator)
        y = labels[idx]
        target = y
        if mix is not None:
            x, target = mix(x, y)
        x = setup.prepare(normalize(x, mean, std))
        with setup.autocast():
            logits = model(x)
            loss = loss_fn(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
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
    if dist_ctx is not None:
        total_loss, correct, seen = dist_ctx.mean([total_loss, correct, seen])
    return {"train_loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, setup: DeviceSetup,
             batch_size: int, mean, std) -> dict:
    model.eval()
    outputs = []
    for idx in _batches(len(labels), batch_size * 2, None, shuffle=False, drop_last=False):
        x = setup.prepare(normalize(images[idx.to(images.device)].to(setup.device, non_blocking=True), mean, std))
        with setup.autocast():
            outputs.append(model(x).float())
    logits = torch.cat(outputs) if outputs else torch.empty(0)
    loss = F.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    preds = logits.argmax(1)
    return {"val_loss": loss, "val_acc": (preds == labels).float().mean().item(), "logits": logits.cpu(),
            "preds": preds.cpu()}
