"""A run's checkpoints (best.pt, last.pt): written atomically, read back as a model without any download.

What evaluation, export and the benchmarks need from a trained run is :func:`load_checkpoint_model`;
they import it from here, not the runner (which pulls the data, features and loop modules).
"""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.models.factory import create_model
from engine.models.registry import get_spec
from engine.training.config import TrainConfig

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "read_checkpoint", "load_checkpoint_model", "software_versions"]

# Bumped when a checkpoint's keys change meaning, so an old file is recognised rather than misread.
CHECKPOINT_FORMAT = 1


def software_versions() -> dict:
    """The versions a run was trained with (recorded in its config, shown beside its results)."""
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__}


def save_checkpoint(path: Path, model: nn.Module, config: TrainConfig, classes: list[str], epoch: int,
                    extra: dict | None = None) -> None:
    """The model's weights, config, classes and epoch (plus ``extra``, e.g. the training state for last.pt).
    Written beside and renamed over ``path``: a kill mid-write leaves the previous checkpoint whole."""
    blob = {"format": CHECKPOINT_FORMAT, "state_dict": model.state_dict(), "config": config.to_dict(),
            "classes": list(classes), "epoch": epoch}
    blob.update(extra or {})
    tmp = path.with_suffix(".partial")
    torch.save(blob, tmp)
    tmp.replace(path)


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint's contents, tensors on ``device``; tensors and plain values only (``weights_only``)."""
    return torch.load(path, map_location=device, weights_only=True)


def load_checkpoint_model(path: Path | str) -> tuple[nn.Module, TrainConfig, list[str]]:
    """Rebuild the trained model from a checkpoint (no pretrained download needed)."""
    blob = read_checkpoint(Path(path))
    config = TrainConfig.from_dict(blob["config"])
    size = config.image_size or get_spec(config.backbone).input_size
    model = create_model(config.backbone, len(blob["classes"]), pretrained=False, image_size=size)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), config, list(blob["classes"])
