"""ONNX files (ground floor): PyTorch model -> ONNX file (torch.onnx's dynamo or TorchScript exporter), the opset,
and the metadata every file carries. Feature extraction, insight and export all write graphs through here."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from engine.workspace import atomic_path

__all__ = ["Uint8Input", "WithFeatures", "onnx_export", "add_metadata", "save_checked", "OUTPUTS", "OPSET"]

OPSET = 20

# Outputs of every exported graph: logits first (what every consumer reads), then the pooled
# backbone features the out-of-distribution score needs (so prediction stays on onnxruntime).
OUTPUTS = ("logits", "features")


class WithFeatures(torch.nn.Module):
    """The classifier returning ``(logits, pooled backbone features)``; logits as ``model(x)`` in eval mode."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model: Any = model  # a TransferModel: forward_features + head

    def forward(self, x: torch.Tensor):
        features = self.model.forward_features(x)
        return self.model.head(features), features


class Uint8Input(torch.nn.Module):
    """uint8 NHWC RGB pixels -> the normalisation training used -> the model."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return self.model((x - self.mean) / self.std)


def onnx_export(model: torch.nn.Module, example: torch.Tensor, path: Path, output_names=("logits",),
                exporter: str = "dynamo") -> None:
    """Export ``model`` with input ``image`` (dynamic batch) and ``output_names`` to ``path``, atomically.

    ``exporter="dynamo"`` (torch.export + onnxscript, the maintained path) is used for the files users
    download. ``exporter="torchscript"`` traces the model instead: on a 2-core host it exports
    MobileNetV2 in 0.5 s against 16 s, with the same onnxruntime speed and outputs (max difference
    5e-6), so the feature cache uses it for its internal graphs and falls back to dynamo when a
    model does not trace.
    """
    if exporter == "torchscript":
        try:
            with atomic_path(path) as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's constant-folding notes mean nothing to a user
                torch.onnx.export(model, (example,), str(tmp), input_names=["image"],
                                  output_names=list(output_names), opset_version=OPSET, dynamo=False,
                                  dynamic_axes={"image": {0: "batch"}})
            return
        except Exception:  # noqa: BLE001 - any tracing failure: the dynamo exporter handles more models
            pass
    elif exporter != "dynamo":
        raise ValueError(f"unknown ONNX exporter '{exporter}'")
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["image"],
        output_names=list(output_names),
        opset_version=OPSET,
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
        optimize=True,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    with atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)


def save_checked(proto, path: Path) -> None:
    """Run the ONNX checker on ``proto``, then write it to ``path`` atomically."""
    import onnx

    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def add_metadata(path: Path, record: dict) -> None:
    """Store the preprocessing ``record`` and class names in the model file's metadata."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in {"transfer_studio.preprocess": json.dumps(record),
                       "transfer_studio.classes": json.dumps(record["classes"])}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"Transfer Studio {record['backbone']} classifier ({record.get('variant', 'fp32')})"
    save_checked(proto, path)
