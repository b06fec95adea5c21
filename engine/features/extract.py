"""Run a frozen backbone over uint8 image tensors: onnxruntime on CPU, PyTorch on a GPU.

On CPU the backbone (with the normalisation folded in) is exported to ONNX once
per backbone, weights and image size and cached; onnxruntime runs it several
times faster than PyTorch eager on this kind of host (``bench recipe`` prints
the ratio). On a GPU PyTorch with autocast and channels_last is faster still.
"""
from __future__ import annotations

import hashlib
import typing
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.models import create_model, get_spec
from engine.device import DeviceSetup, resolve_device
from engine.workspace import shared_cache_dir

__all__ = ["FeatureExtractor", "feature_extractor", "module_extractor", "backbone_key", "ort_runner"]

EXTRACT_VERSION = 1
# Exporting a backbone to ONNX takes about a second (TorchScript exporter); below this many images
# (and no exported file yet) PyTorch eager finishes first, so "auto" uses it.
ORT_MIN_IMAGES = 200
Progress = Callable[[int, int], None]


def backbone_key(backbone: str, size: int) -> str:
    """Names one frozen feature function: architecture, weights, input size, preprocessing."""
    from engine.models.supplied import weights_identity

    spec = get_spec(backbone)
    record = {"backbone": spec.name, "family": spec.family, "weights": spec.weights, "size": int(size),
              "mean": list(spec.mean), "std": list(spec.std), "version": EXTRACT_VERSION}
    supplied = weights_identity(backbone)  # a supplied weights file replaces the published weights
    if supplied is not None:
        record["supplied"] = supplied
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]


class _FeatureGraph(nn.Module):
    """uint8 NCHW pixels -> the backbone's normalisation -> pooled features."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x.to(torch.float32) / 255.0 - self.mean) / self.std)


class FeatureExtractor:
    """``extractor(images_uint8) -> float32 (N, D)``, batched, with progress."""

    def __init__(self, backbone: str, size: int, engine: str, run: Callable[[torch.Tensor], np.ndarray],
                 batch_size: int):
        self.backbone, self.size, self.engine = backbone, size, engine
        self._run, self.batch_size = run, batch_size

    def __call__(self, images: torch.Tensor, progress: Progress | None = None) -> np.ndarray:
        batches = (images[start : start + self.batch_size] for start in range(0, len(images), self.batch_size))
        return self.over_batches(batches, len(images), progress)

    def over_batches(self, batches: Iterable[torch.Tensor], total: int, progress: Progress | None = None) -> np.ndarray:
        """Features of image batches as they come (from a file, a decoder): one batch in memory at a time."""
        out, done = [], 0
        for batch in batches:
            out.append(self._run(batch))
            done += len(batch)
            if progress is not None:
                progress(done, total)
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


def ort_runner(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    """A CPU onnxruntime session over an ONNX file with one uint8 image input: ``run(batch) -> ndarray``."""
    import onnxruntime as ort

    from engine.device import ort_threads

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # A training worker owns its cores; a page process shares them (TS_ORT_THREADS).
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or ort_threads()
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> np.ndarray:
        return session.run(None, {name: batch.cpu().numpy()})[0]

    return run


def module_extractor(net: nn.Module, mean, std, size: int, scratch: Path, setup: DeviceSetup | None = None,
                     engine: str = "auto", images: int | None = None) -> FeatureExtractor:
    """``net`` (any module over normalised images with one float output, e.g. a fine-tuned model's features
    and logits side by side) as a batched function of uint8 NCHW images.

    The same engines as :func:`feature_extractor`: on CPU ``net`` is exported to ``scratch`` (an ONNX file
    of its own, removed once onnxruntime has read it: trained weights are not a cache) and run there,
    several times faster than eager; on a GPU, or for fewer than ``ORT_MIN_IMAGES`` images, PyTorch.
    """
    setup = setup or resolve_device()
    if engine == "auto":
        few = images is not None and images < ORT_MIN_IMAGES
        engine = "torch" if setup.device.type == "cuda" or few else "onnxruntime"
    if engine not in ("onnxruntime", "torch"):
        raise ValueError(f"unknown feature engine '{engine}'")
    graph = _FeatureGraph(net, mean, std).eval()
    if engine == "torch":
        return FeatureExtractor("", size, engine, _torch_runner(graph, setup), batch_size=64)
    from engine.onnx_io import onnx_export

    scratch.parent.mkdir(parents=True, exist_ok=True)
    try:
        onnx_export(graph.cpu(), torch.zeros(2, 3, size, size, dtype=torch.uint8), scratch, exporter="torchscript")
        run = ort_runner(scratch)
    except Exception:  # noqa: BLE001 - a model neither exporter takes is still scored, by PyTorch
        return FeatureExtractor("", size, "torch", _torch_runner(graph, setup), batch_size=64)
    finally:
        scratch.unlink(missing_ok=True)
    return FeatureExtractor("", size, engine, run, batch_size=32)


def _torch_runner(graph: nn.Module, setup: DeviceSetup) -> Callable[[torch.Tensor], np.ndarray]:
    graph = graph.to(setup.device).eval()
    if setup.channels_last:
        graph = graph.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def run(batch: torch.Tensor) -> np.ndarray:
        x = setup.prepare(batch.to(setup.device, non_blocking=True))
        with setup.autocast():
            return graph(x).float().cpu().numpy()

    return run


def feature_extractor(backbone: str, size: int, setup: DeviceSetup | None = None, engine: str = "auto",
                      model: nn.Module | None = None, images: int | None = None) -> FeatureExtractor:
    """A frozen feature function for ``backbone`` at ``size`` px.

    ``engine``: ``onnxruntime`` | ``torch`` | ``auto`` (torch on GPU; on CPU onnxruntime, unless
    the backbone is not exported yet and ``images``, the number to come, is below ``ORT_MIN_IMAGES``).
    ``model``: the pretrained TransferModel when the caller has it loaded already (it must
    still hold the pretrained weights: the ONNX file is cached under their name).
    """
    setup = setup or resolve_device()
    path = shared_cache_dir() / "backbones" / f"{backbone_key(backbone, size)}.onnx"
    if engine == "auto":
        few = images is not None and images < ORT_MIN_IMAGES and not path.is_file()
        engine = "torch" if setup.device.type == "cuda" or few else "onnxruntime"
    if engine not in ("onnxruntime", "torch"):
        raise ValueError(f"unknown feature engine '{engine}'")
    spec = get_spec(backbone)

    def graph() -> nn.Module:
        net = model if model is not None else create_model(backbone, 2, pretrained=True, image_size=size)
        return _FeatureGraph(typing.cast(nn.Module, net.backbone), spec.mean, spec.std).eval()

    if engine == "onnxruntime":
        if not path.is_file():  # exported once per backbone, weights and size
            from engine.onnx_io import onnx_export

            path.parent.mkdir(parents=True, exist_ok=True)
            onnx_export(graph(), torch.zeros(2, 3, size, size, dtype=torch.uint8), path, output_names=("features",),
                        exporter="torchscript")
        return FeatureExtractor(backbone, size, engine, ort_runner(path), batch_size=32)
    return FeatureExtractor(backbone, size, engine, _torch_runner(graph(), setup), batch_size=64)
