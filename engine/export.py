"""ONNX export with its preprocessing recorded, and a parity gate against PyTorch."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.runs import Run
from engine.workspace import write_json_atomic

__all__ = ["export_run", "preprocess_record", "ExportParityError", "PARITY_ATOL"]

# Logit tolerance: fp32 kernels differ between PyTorch and onnxruntime by ~1e-5.
PARITY_ATOL = 1e-3


class ExportParityError(RuntimeError):
    """The exported model does not reproduce the PyTorch model."""


def preprocess_record(config: dict, classes: list[str]) -> dict:
    resolved = config["resolved"]
    size = resolved["image_size"]
    return {
        "input_name": "image",
        "input_layout": "NCHW",
        "input_dtype": "float32",
        "input_size": size,
        "color_order": "RGB",
        "resize": f"shorter side to {size} px, bilinear (PIL)",
        "crop": f"centre {size}x{size}",
        "scale": 1 / 255,
        "mean": resolved["mean"],
        "std": resolved["std"],
        "exif_orientation": "applied",
        "alpha": "composited on white",
        "output": "logits; softmax gives probabilities",
        "classes": classes,
        "backbone": config["backbone"],
        "mode": config["mode"],
    }


def _onnx_export(model: torch.nn.Module, size: int, path: Path) -> None:
    example = torch.randn(2, 3, size, size)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["image"],
        output_names=["logits"],
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
        optimize=True,
        verbose=False,
    )
    tmp = path.with_suffix(".partial.onnx")
    program.save(str(tmp), external_data=False)
    tmp.replace(path)


def _add_metadata(path: Path, record: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in {"transfer_studio.preprocess": json.dumps(record),
                       "transfer_studio.classes": json.dumps(record["classes"])}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_run(run_dir: Path | str, max_parity_images: int | None = None) -> dict:
    """Write RUN_DIR/export/model.onnx (+ preprocess.json, parity.json); raise if parity fails."""
    from engine.data.dataset import load_dataset
    from engine.data.tensors import decode_split
    from engine.inference import OnnxClassifier
    from engine.training.augment import normalize
    from engine.training.runner import load_checkpoint_model

    run = Run(run_dir)
    config = run.config()
    if not run.best_checkpoint.is_file():
        raise UserError(f"run '{run.id}' has no trained weights yet (state: {run.status().get('state')}); train it first")
    model, _cfg, classes = load_checkpoint_model(run.best_checkpoint)
    record = preprocess_record(config, classes)
    size = record["input_size"]
    run.export_dir.mkdir(exist_ok=True)
    t0 = time.time()
    _onnx_export(model, size, run.onnx_file)
    _add_metadata(run.onnx_file, record)
    write_json_atomic(run.export_dir / "preprocess.json", record)
    export_s = time.time() - t0

    # Parity on the validation images, preprocessed exactly as training saw them.
    dataset = load_dataset(config["dataset"], val_fraction=config.get("val_fraction", 0.2), seed=config.get("seed", 0))
    val = decode_split(dataset, "val", size, classes)
    images = val.images if max_parity_images is None else val.images[:max_parity_images]
    x = normalize(images, record["mean"], record["std"])
    with torch.no_grad():
        torch_logits = torch.cat([model(x[i : i + 64]) for i in range(0, len(x), 64)]).numpy()
    session = OnnxClassifier(run.onnx_file)
    onnx_logits = session.logits(x.numpy())
    agreement = float((torch_logits.argmax(1) == onnx_logits.argmax(1)).mean())
    diff = np.abs(torch_logits - onnx_logits)
    parity = {
        "images": int(len(x)),
        "top1_agreement": agreement,
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "tolerance": PARITY_ATOL,
        "passed": bool(agreement == 1.0 and diff.max() <= PARITY_ATOL),
        "export_seconds": round(export_s, 2),
        "onnx_bytes": run.onnx_file.stat().st_size,
    }
    write_json_atomic(run.export_dir / "parity.json", parity)
    if not parity["passed"]:
        raise ExportParityError(
            f"exported model disagrees with PyTorch: top-1 agreement {agreement:.4f}, "
            f"max |logit diff| {parity['max_abs_logit_diff']:.2e} (tolerance {PARITY_ATOL})"
        )
    return parity
