"""Class-activation maps: captum's LayerGradCam on the backbone's last stage, overlaid on the image."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.models import TransferModel

__all__ = ["target_layer", "grad_cam", "overlay"]


def target_layer(model: TransferModel) -> nn.Module:
    """The last backbone stage that produces a spatial map (where Grad-CAM is usually taken)."""
    for stage in reversed(model.stages()):
        if isinstance(stage, nn.ParameterList):
            continue
        if isinstance(stage, nn.ModuleList):  # e.g. efficientnet-lite's [conv_head, bn]: its output is the last one's
            return stage[-1]
        return stage
    raise ValueError("the model has no backbone stage to take an activation map from")


def grad_cam(model: TransferModel, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    """Grad-CAM heatmaps in [0, 1], one per target class, at the input's resolution.

    ``x`` is one normalised image ``(1, 3, S, S)``. captum's ``LayerGradCam`` weights the
    layer's channels by their mean gradient and keeps the positive part (ReLU).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    model = model.eval()
    cam = LayerGradCam(model, target_layer(model))
    batch = x.expand(len(targets), -1, -1, -1).clone().requires_grad_(True)
    attr = cam.attribute(batch, target=list(targets), relu_attributions=True)
    up = LayerAttribution.interpolate(attr.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    maps = up[:, 0].clamp_min(0).numpy()
    peak = maps.reshape(len(targets), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1), 0.0).astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 HWC RGB image with ``heat`` (HxW in [0, 1]) blended on top as a 'jet'-like colour map."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    base = np.asarray(image, dtype=np.float32) / 255.0
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    mixed = (1 - alpha) * base + alpha * colours
    return (np.clip(mixed, 0, 1) * 255).round().astype(np.uint8)
