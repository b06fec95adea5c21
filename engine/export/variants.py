"""The export variants, where each lives in ``RUN_DIR/export/``, and the preprocessing each records."""
from __future__ import annotations

from pathlib import Path

from engine.errors import UserError
from engine.runs import Resolved, Run
from engine.onnx_io import OPSET

__all__ = ["VARIANTS", "VARIANT_FILES", "STRICT_VARIANTS", "OPSET", "variant_path", "check_variants",
           "preprocess_record", "variant_record"]

# Opset 20 loads in onnxruntime >= 1.17; the consumer's runtime matters more than ours.
VARIANTS = ("fp32", "fp32-uint8in", "fp16", "int8")
VARIANT_FILES = {"fp32": "model.onnx", "fp32-uint8in": "model.uint8in.onnx",
                 "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
# Variants that must reproduce PyTorch (the gate); the others report their cost.
STRICT_VARIANTS = ("fp32", "fp32-uint8in")


def check_variants(variants) -> list[str]:
    """The names, in order and without repeats; an unknown one raises :class:`UserError`."""
    for v in variants:
        if v not in VARIANT_FILES:
            raise UserError(f"unknown export variant '{v}'; choose from: {', '.join(VARIANTS)}")
    return list(dict.fromkeys(variants))


def variant_path(run: Run, variant: str) -> Path:
    check_variants([variant])
    return run.export_dir / VARIANT_FILES[variant]


def preprocess_record(config: dict, classes: list[str], temperature: float = 1.0) -> dict:
    resolved = Resolved.of(config)
    size = resolved.image_size
    return {
        "input_name": "image",
        "input_layout": "NCHW",
        "input_dtype": "float32",
        "input_size": size,
        "color_order": "RGB",
        "resize": f"shorter side to {size} px, bilinear (PIL)",
        "crop": f"centre {size}x{size}",
        "scale": 1 / 255,
        "mean": resolved.mean,
        "std": resolved.std,
        "normalize": "x = (pixel / 255 - mean) / std, per channel, float32",
        "exif_orientation": "applied",
        "alpha": "composited on white",
        "output": "logits",
        "temperature": float(temperature),
        "probabilities": "softmax(logits / temperature)",
        "classes": classes,
        "backbone": config["backbone"],
        "mode": config["mode"],
        "opset": OPSET,
    }


def variant_record(record: dict, variant: str) -> dict:
    """``record`` as one variant's input and precision differ from fp32's."""
    out = dict(record, variant=variant)
    if variant == "fp32-uint8in":
        out.update(input_layout="NHWC", input_dtype="uint8", scale=None,
                   normalize="in the graph: feed the resized, cropped RGB pixels as uint8")
    if variant == "fp16":
        out["precision"] = "fp16 weights and compute; float32 input and output"
    if variant == "int8":
        out["precision"] = "int8 weights (per-channel) and uint8 activations (QDQ); float32 input and output"
    return out
