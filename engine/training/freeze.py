"""Which parameters train, and at what learning rate: the freeze/unfreeze policy.

Kept apart from the loop (as in Lightning's fine-tuning example) so a new
policy never touches the training code.
"""
from __future__ import annotations

from torch import nn

from engine.models.registry import TransferModel

__all__ = ["apply_freeze_policy", "param_groups", "set_train_mode"]


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def apply_freeze_policy(model: TransferModel, mode: str, unfreeze_stages: int = 3) -> None:
    """linear: head only; partial: head + last K stages; full/scratch: everything."""
    stages = model.stages()
    if mode == "linear":
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


def set_train_mode(model: TransferModel) -> None:
    """model.train(), but frozen stages stay in eval mode.

    A frozen batch-norm layer must keep its ImageNet running statistics; in
    train mode it would overwrite them with small-batch estimates.
    """
    model.train()
    for stage in getattr(model, "frozen_stages", []):
        if isinstance(stage, nn.Module):
            stage.eval()


def param_groups(model: TransferModel, lr: float, backbone_lr_mult: float, weight_decay: float, mode: str):
    """AdamW groups: the new head at ``lr``, pretrained layers at ``lr * mult``.

    Biases and norm weights get no weight decay.
    """
    backbone_lr = lr if mode == "scratch" else lr * backbone_lr_mult
    groups = []
    for module, group_lr in ((model.head, lr), (model.backbone, backbone_lr)):
        decay, no_decay = [], []
        for p in module.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        if decay:
            groups.append({"params": decay, "lr": group_lr, "weight_decay": weight_decay})
        if no_decay:
            groups.append({"params": no_decay, "lr": group_lr, "weight_decay": 0.0})
    return groups
