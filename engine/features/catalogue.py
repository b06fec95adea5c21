"""The backbone catalogue the Backbone page and ``python -m engine backbones`` show: the registry's published
figures, whether the weights load now, and the feature-extraction latency measured on this host."""
from __future__ import annotations

from engine.features.latency import cached_latency
from engine.models.availability import availability
from engine.models.registry import registered_specs

__all__ = ["backbone_catalogue"]


def backbone_catalogue(image_size: int | None = None) -> list[dict]:
    """Every backbone with its published figures and availability; with ``image_size``, also its
    feature-extraction latency measured on this host at that size (None until measured)."""
    rows = []
    for spec in registered_specs():
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
            lat = cached_latency(spec.name, image_size) or {}
            row.update({"ort_ms_b1": lat.get("ort_ms_b1"), "ort_ms_b32": lat.get("ort_ms_b32"),
                        "eager_ms_b32": lat.get("eager_ms_b32")})
        rows.append(row)
    return rows
