"""Batched augmentation on the training device (GPU or CPU alike).

A whole uint8 batch is cropped, flipped and colour-jittered with one
``affine_grid``/``grid_sample`` and a few tensor ops, each sample with its own
random parameters. No per-image Python work, so a GPU is not left waiting.

"strong" adds TrivialAugmentWide (torchvision.transforms.v2, per sample on the
device: one op per image, still no decode or PIL). MixUp/CutMix act on whole
batches and turn labels into soft targets (``mix_batch``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["AUGMENT_PRESETS", "augment_batch", "normalize", "mix_batch", "trivial_augment"]

# scale: area fraction range of the random resized crop; jitter: colour strength.
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {"scale": None, "flip": False, "jitter": 0.0, "trivial": False},
    "light": {"scale": (0.6, 1.0), "flip": True, "jitter": 0.1, "trivial": False},
    "strong": {"scale": (0.25, 1.0), "flip": True, "jitter": 0.2, "trivial": True},
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
    if cfg.get("trivial"):
        images = trivial_augment(images)
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


_TRIVIAL = None


def trivial_augment(images: torch.Tensor) -> torch.Tensor:
    """TrivialAugmentWide per sample (v2 would apply one op to a whole batch tensor).

    Draws from torch's global RNG, which the runner seeds and checkpoints.
    """
    global _TRIVIAL
    if _TRIVIAL is None:
        from torchvision.transforms import v2

        _TRIVIAL = v2.TrivialAugmentWide()
    return torch.stack([_TRIVIAL(img) for img in images])


def mix_batch(x: torch.Tensor, y: torch.Tensor, mode: str, num_classes: int, alpha: float = 0.2):
    """MixUp (``alpha``) / CutMix (or a random one of the two) -> (images, soft targets ``(B, C)``)."""
    from torchvision.transforms import v2

    if mode == "mixup":
        op = v2.MixUp(alpha=alpha, num_classes=num_classes)
    elif mode == "cutmix":
        op = v2.CutMix(alpha=1.0, num_classes=num_classes)  # the CutMix paper's default
    else:
        op = v2.RandomChoice([v2.MixUp(alpha=alpha, num_classes=num_classes),
                              v2.CutMix(alpha=1.0, num_classes=num_classes)])
    return op(x, y)
