"""Which parameters train, and at what learning rate: the freeze/unfreeze policy.

Kept apart from the loop (as in Lightning's fine-tuning example) so a new
policy never touches the training code.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from engine.models.factory import TransferModel

__all__ = ["apply_freeze_policy", "param_groups", "set_train_mode", "gradual_stages", "trainable_stages",
           "adapt_batch_norm"]


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def gradual_stages(epoch: int, every: int = 1) -> int:
    """Gradual unfreezing: backbone stages open at 0-based ``epoch`` (head only first)."""
    return epoch // max(1, every)


def trainable_stages(model: TransferModel, mode: str, unfreeze_stages: int = 3, epoch: int = 0,
                     every: int = 1) -> int:
    """How many of the last backbone stages train under ``mode`` at ``epoch``."""
    n = len(model.stages())
    if mode == "linear":
        return 0
    if mode == "partial":
        return max(1, min(unfreeze_stages, n))
    if mode == "gradual":
        return min(gradual_stages(epoch, every), n)
    return n


def apply_freeze_policy(model: TransferModel, mode: str, unfreeze_stages: int = 3, epoch: int = 0,
                        every: int = 1) -> None:
    """linear: head only; partial: head + last K stages; gradual: head, then one more
    stage every ``every`` epochs; full/scratch: everything."""
    stages = model.stages()
    if mode == "gradual":
        k = trainable_stages(model, mode, epoch=epoch, every=every)
        _set_trainable(model.backbone, k >= len(stages))
        for stage in stages[len(stages) - k:]:
            _set_trainable(stage, True)
        model.frozen_stages = stages[: len(stages) - k]
    elif mode == "linear":
        _set_trainable(model.backbone, False)
        model.frozen_stages = stages
    elif mode == "partial":
        k = max(1, min(unfreeze_stages, len(stages)))
        _set_trainable(model.backbone, False)
        for stage in stages[-k:]:
            _set_trainable(stage, True)
        model.frozen_stages = stages[:-k]
    else:
        _set_trainable(model.backbone, True)
        model.frozen_stages = []
    _set_trainable(model.head, True)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def set_train_mode(model: TransferModel, freeze_norm: bool = False) -> None:
    """model.train(), but frozen stages stay in eval mode (and every batch-norm layer with ``freeze_norm``).

    A frozen batch-norm layer must keep its ImageNet running statistics; in
    train mode it would overwrite them with small-batch estimates. With
    ``freeze_norm`` the trainable stages' batch norms keep their statistics too
    (their affine weights still train): the features the head warm-up was fitted
    on do not shift under it when fine-tuning starts.
    """
    model.train()
    for stage in getattr(model, "frozen_stages", []):
        if isinstance(stage, nn.Module):
            stage.eval()
    if freeze_norm:
        for module in model.backbone.modules():
            if isinstance(module, _BATCH_NORMS):
                module.eval()


@torch.no_grad()
def adapt_batch_norm(model: TransferModel, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every backbone batch-norm layer's running statistics on ``batches`` (normalised,
    un-augmented training images), as AdaBN does; weights are untouched. Returns the layers reset.

    The statistics become the plain average of the batches' statistics (``momentum=None``, as
    ``torch.optim.swa_utils.update_bn``), not a moving estimate that forgets the first batches. Done
    before the head warm-up, the head is fitted on the features the fine-tune starts from.
    """
    norms = [m for m in model.backbone.modules() if isinstance(m, _BATCH_NORMS)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for x in batches:
            model.backbone(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()
        model.train(was_training)
    return len(norms)


def _lr_layers(model: TransferModel, lr: float, backbone_lr: float, layer_decay: float):
    """(params, lr) pairs: head at ``lr``; the last stage at ``backbone_lr``, each earlier
    stage ``layer_decay`` times slower; backbone params outside the stages at the lowest."""
    stages = model.stages()
    layers = [(list(model.head.parameters()), lr)]
    seen: set[int] = set()
    for depth, stage in enumerate(reversed(stages)):
        params = [p for p in stage.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        layers.append((params, backbone_lr * layer_decay ** depth))
    rest = [p for p in model.backbone.parameters() if id(p) not in seen]
    if rest:
        layers.append((rest, backbone_lr * layer_decay ** max(0, len(stages) - 1)))
    return layers


def param_groups(model: TransferModel, lr: float, backbone_lr_mult: float, weight_decay: float, mode: str,
                 layer_decay: float = 1.0):
    """AdamW groups: the new head at ``lr``, pretrained layers at ``lr * mult``, decayed by
    ``layer_decay`` per stage towards the input (discriminative, layer-wise learning rates).

    Scratch mode has nothing pretrained to protect: one LR everywhere. Gradual mode
    includes frozen stages too (they have no grad until unfrozen, so AdamW skips them).
    Biases and norm weights get no weight decay.
    """
    if mode == "scratch":
        backbone_lr, layer_decay = lr, 1.0
    else:
        backbone_lr = lr * backbone_lr_mult
    include_frozen = mode == "gradual"
    groups = []
    for params, group_lr in _lr_layers(model, lr, backbone_lr, layer_decay):
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for p in params:
            if p.requires_grad or include_frozen:
                (no_decay if p.ndim <= 1 else decay).append(p)
        if decay:
            groups.append({"params": decay, "lr": group_lr, "weight_decay": weight_decay})
        if no_decay:
            groups.append({"params": no_decay, "lr": group_lr, "weight_decay": 0.0})
    return groups
