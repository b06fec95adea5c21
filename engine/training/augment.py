"""Batched augmentation on the training device (GPU or CPU alike).

A whole uint8 batch is cropped, flipped and colour-jittered with one
``affine_grid``/``grid_sample`` and a few tensor ops, each sample with its own
random parameters. No per-image Python work, so a GPU is not left waiting.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["AUGMENT_PRESETS", "augment_batch", "normalize"]

# scale: area fraction range of the random resized crop; jitter: colour strength.
AUGMENT_PRESETS = {
    "none": {"scale": None, "flip": False, "jitter": 0.0},
    "light": {"scale": (0.6, 1.0), "flip": True, "jitter": 0.1},
    "strong": {"scale": (0.25, 1.0), "flip": True, "jitter": 0.4},
}


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 or [0,1] float NCHW -> normalised float."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def _random_resized_crop_theta(n: int, scale, flip: bool, generator, device) -> torch.Tensor:
    area = torch.empty(n, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, device=device).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = torch.exp(log_ratio)
    # Crop width/height as fractions of the image side, capped to fit.
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, device=device, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, device=device, generator=generator) * 2 - 1) * (1 - h)
    if flip:
        sign = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0)
    else:
        sign = torch.ones(n, device=device)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta


def augment_batch(images: torch.Tensor, preset: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 ``(B,3,S,S)`` -> augmented float in [0,1], same shape and device."""
    cfg = AUGMENT_PRESETS[preset]
    x = images.float().div_(255.0)
    n, device = x.shape[0], x.device
    if cfg["scale"] is not None:
        theta = _random_resized_crop_theta(n, cfg["scale"], cfg["flip"], generator, device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    strength = cfg["jitter"]
    if strength:
        def factor():
            return 1 + (torch.rand(n, 1, 1, 1, device=device, generator=generator) * 2 - 1) * strength

        x = x * factor()  # brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor() + mean  # contrast
        grey = x.mean(dim=1, keepdim=True)
        x = (x - grey) * factor() + grey  # saturation
        x = x.clamp_(0.0, 1.0)
    return x
