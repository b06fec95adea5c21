"""Feature-extraction latency measured on this host, once per backbone and image size, cached.

The same frozen feature function the probe and the sweep use (normalisation folded
in, uint8 pixels in): onnxruntime on CPU at batch 1 and 32, and PyTorch eager in the
same run (on the GPU when there is one) for the ratio. Milliseconds per image, the
median of a few timed repeats after a warm-up.
"""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from engine.workspace import read_json, shared_cache_dir, write_json_atomic

__all__ = ["measure_latency", "cached_latency", "LATENCY_VERSION"]

LATENCY_VERSION = 3
BATCHES = (1, 32)


def _host() -> str:
    return f"{platform.node()}-{os.cpu_count()}cpu"


def _path(backbone: str, size: int):
    from engine.features.extract import backbone_key

    return shared_cache_dir() / "latency" / f"{backbone_key(backbone, size)}-{_host()}-v{LATENCY_VERSION}.json"


def cached_latency(backbone: str, size: int) -> dict | None:
    """The stored measurement of ``backbone`` at ``size`` px on this host, or None."""
    try:
        return read_json(_path(backbone, size))
    except Exception:  # an unknown backbone, a damaged file: not measured
        return None


def _ms_per_image(run, images: torch.Tensor, budget_s: float) -> float:
    run(images)  # warm-up (first-call allocations, lazy initialisation)
    times: list[float] = []
    # One image takes milliseconds and is noisy on a shared CPU (another runtime's threads still spinning
    # from the previous call): a median of at least ten. Measured: MobileNetV2 b1 8.1 ms as a median of
    # three right after the sweep's feature extraction, 1.9-2.8 ms alone.
    min_reps, max_reps = (10, 50) if len(images) == 1 else (1, 5)
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times) / len(images)


def measure_latency(backbone: str, size: int, force: bool = False, budget_s: float = 1.5,
                    model=None) -> dict:
    """ms per image at batch 1 and 32: onnxruntime (CPU) and PyTorch eager; stored once per host."""
    if not force:
        stored = cached_latency(backbone, size)
        if stored is not None:
            return stored
    from engine.device import ort_threads
    from engine.features.extract import feature_extractor
    from engine.models import create_model
    from engine.device import resolve_device

    setup = resolve_device()
    if model is None:
        model = create_model(backbone, 2, pretrained=True, image_size=size)
    ort = feature_extractor(backbone, size, engine="onnxruntime", model=model)
    eager = feature_extractor(backbone, size, setup=setup, engine="torch", model=model)
    gen = torch.Generator().manual_seed(0)
    result: dict = {"backbone": backbone, "size": int(size), "host": _host(),
                    "ort_threads": int(os.environ.get("OMP_NUM_THREADS") or 0) or ort_threads(),
                    "torch_threads": torch.get_num_threads(), "torch_device": setup.device.type}
    for batch in BATCHES:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
        result[f"ort_ms_b{batch}"] = round(_ms_per_image(ort, images, budget_s), 3)
        result[f"eager_ms_b{batch}"] = round(_ms_per_image(eager, images, budget_s), 3)
        result[f"eager_over_ort_b{batch}"] = round(result[f"eager_ms_b{batch}"] / result[f"ort_ms_b{batch}"], 2)
    result["measured_at"] = time.time()
    write_json_atomic(_path(backbone, size), result)
    return result
