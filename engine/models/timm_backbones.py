"""The timm family: architectures and weights through timm's own pretrained mechanism.

Weights come from the Hugging Face hub cache (timm's ``pretrained=True``) or from a
file an operator placed in the weights folder (:mod:`engine.models.supplied`), handed
to timm as ``pretrained_cfg_overlay=dict(file=...)``. Input size, mean/std and
interpolation come from the weights' ``pretrained_cfg``; parameters, GMACs and ImageNet
top-1 are the published figures (timm's results tables, or the model's paper where the
weights have no ImageNet head).

Availability is looked up without ever waiting on a network: the hub cache is read with
``huggingface_hub.try_to_load_from_cache`` and the hub is "reachable" only if a TCP
connection opens within two seconds (never tried with ``HF_HUB_OFFLINE`` set).
"""
from __future__ import annotations

import os
import socket
import threading
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from torch import nn

__all__ = ["TimmEntry", "TIMM_BACKBONES", "timm_pretrained_cfg", "hub_cached_file", "hub_reachable", "host_reachable",
           "build_timm", "timm_stages"]

HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class TimmEntry:
    name: str  # the registry's name
    timm_name: str  # architecture.tag in timm
    params_m: float
    gflops: float  # GMACs at the pretrained input size, as torchvision's figures are
    imagenet_top1: float
    notes: str


# Figures: timm's results-imagenet.csv / benchmark csv (224 px unless said), or the paper.
TIMM_BACKBONES = (
    TimmEntry("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m", 22.06, 46.76, 81.1,
              "DINOv2 self-supervised ViT-S/14 (Apache-2.0); top-1 is the paper's linear probe; GMACs at 518 px"),
    TimmEntry("dinov2_vitb14", "vit_base_patch14_dinov2.lvd142m", 86.58, 151.71, 84.5,
              "DINOv2 self-supervised ViT-B/14 (Apache-2.0); top-1 is the paper's linear probe; GMACs at 518 px"),
    TimmEntry("clip_vitb16", "vit_base_patch16_clip_224.openai", 86.19, 17.58, 80.2,
              "OpenAI CLIP ViT-B/16 image tower; top-1 is the CLIP paper's linear probe"),
    TimmEntry("convnextv2_tiny", "convnextv2_tiny.fcmae_ft_in22k_in1k", 28.64, 4.47, 83.9,
              "ConvNeXt-V2 (FCMAE, IN-22k then IN-1k; CC-BY-NC-4.0); timm publishes no 'small' weights, "
              "tiny is the small member"),
    TimmEntry("efficientnetv2_s", "tf_efficientnetv2_s.in21k_ft_in1k", 21.46, 5.35, 83.3,
              "EfficientNetV2-S (IN-21k then IN-1k), top-1 and GMACs at 300 px"),
    TimmEntry("mobilenetv4_small", "mobilenetv4_conv_small.e2400_r224_in1k", 3.77, 0.19, 73.8,
              "MobileNetV4 conv small (IN-1k), the fastest here"),
)


def timm_pretrained_cfg(timm_name: str) -> dict:
    """The weights' ``pretrained_cfg`` (no model is built, nothing is downloaded)."""
    import timm.models

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        raise KeyError(timm_name)
    return cfg.to_dict()


def hub_cached_file(timm_name: str) -> Path | None:
    """The weights file in the local Hugging Face hub cache, or None (reads the cache only)."""
    hub_id = timm_pretrained_cfg(timm_name).get("hf_hub_id")
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in HUB_FILES:
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


_REACHABLE: dict[str, tuple[float, bool]] = {}


def host_reachable(url: str, timeout: float = 2.0, ttl: float = 300.0) -> bool:
    """Whether ``url``'s host accepts a TCP connection within ``timeout`` seconds (remembered ``ttl`` s)."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or (80 if parsed.scheme == "http" else 443)
    cached = _REACHABLE.get(f"{host}:{port}")
    if cached and time.monotonic() - cached[0] < ttl:
        return cached[1]
    result = [False]

    def probe() -> None:  # name resolution has no timeout of its own: run it where we need not wait
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    _REACHABLE[f"{host}:{port}"] = (time.monotonic(), result[0])
    return result[0]


def hub_reachable() -> bool:
    """Whether timm could download from the Hugging Face hub now (never with ``HF_HUB_OFFLINE`` set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    return host_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def build_timm(timm_name: str, pretrained: bool, image_size: int | None, file: Path | None = None,
               num_classes: int = 0) -> nn.Module:
    """A timm model returning pooled features (``num_classes=0``), at ``image_size`` for ViTs.

    ``file``: load the weights from this local file through timm (``pretrained_cfg_overlay``);
    without it, ``pretrained`` loads from the hub (its cache first).
    """
    import timm

    kwargs: dict = {"num_classes": num_classes}
    cfg = timm_pretrained_cfg(timm_name)
    if image_size and cfg.get("fixed_input_size"):
        kwargs["img_size"] = image_size  # ViTs: position embeddings resampled to this grid on load
    elif image_size and timm_name.startswith("vit_"):
        kwargs["img_size"] = image_size
    if pretrained and file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(file)}
    return timm.create_model(timm_name, pretrained=pretrained, **kwargs)


def timm_stages(model: nn.Module) -> list[nn.Module]:
    """The model's own layer groups (``group_matcher`` + ``timm.models.group_parameters``), input to output.

    Each group becomes the largest modules whose parameters all belong to it (a whole
    block rather than its layers, so a hook on the stage sees the block's output);
    parameters held directly by a module that spans groups (a ViT's class token and
    position embedding) join their group as a ``ParameterList`` placed first.
    """
    from timm.models import group_parameters

    matcher = typing.cast(typing.Any, model).group_matcher  # every timm model has one; nn.Module does not say
    groups = group_parameters(model, matcher(coarse=False))
    group_of = {name: gid for gid, names in groups.items() for name in names}
    owned: dict[str, set] = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        owned[mod_name] = {group_of.get(prefix + p) for p, _ in module.named_parameters()}
    modules: dict = {gid: [] for gid in groups}
    loose: dict = {gid: [] for gid in groups}
    taken: list[str] = []
    for mod_name, module in model.named_modules():
        if any(mod_name.startswith(t + ".") for t in taken) or not owned[mod_name]:
            continue
        if len(owned[mod_name]) == 1 and None not in owned[mod_name]:
            gid = next(iter(owned[mod_name]))
            if mod_name:
                modules[gid].append(module)
                taken.append(mod_name)
                continue
        prefix = f"{mod_name}." if mod_name else ""
        for p_name, param in module.named_parameters(recurse=False):
            gid = group_of.get(prefix + p_name)
            if gid is not None:
                loose[gid].append(param)
    stages: list[nn.Module] = []
    for gid in groups:
        members = ([nn.ParameterList(loose[gid])] if loose[gid] else []) + modules[gid]
        if not members:
            continue
        stages.append(members[0] if len(members) == 1 else nn.ModuleList(members))
    return stages
