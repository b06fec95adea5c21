"""``export_run``: a run's best weights -> every asked ONNX variant, calibrated and gated.

Files under ``RUN_DIR/export/``::

    model.onnx            fp32, float32 NCHW normalised input (always written)
    model.uint8in.onnx    fp32 with normalisation in the graph: uint8 RGB NHWC in
    model.fp16.onnx       fp16 weights/compute, float32 IO (for GPUs)
    model.int8.onnx       static int8 QDQ, per-channel, calibrated on training images
    preprocess.json       the preprocessing every consumer must apply
    parity.json           the gate (:mod:`engine.export.parity`): per variant, agreement
                          with PyTorch on the whole validation split, logit error, accuracy, flips

A strict (fp32) variant that does not reproduce PyTorch raises
:class:`~engine.export.parity.ExportParityError` and blocks the bundle.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine.errors import UserError
from engine.export.calibration import export_temperature
from engine.onnx_io import OUTPUTS, Uint8Input, WithFeatures, add_metadata, onnx_export
from engine.export.parity import check_parity, raise_if_failed, torch_logits
from engine.export.variants import OPSET, VARIANT_FILES, check_variants, preprocess_record, variant_path, variant_record
from engine.runs import Run
from engine.workspace import write_json_atomic

__all__ = ["export_run"]


def export_run(
    run_dir: Path | str,
    variants: tuple[str, ...] | list[str] = ("fp32",),
    max_parity_images: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Export the run's best weights to the asked variants, then gate them.

    fp32 is always exported (the others derive from it). Writes
    ``export/parity.json`` and returns it; raises :class:`ExportParityError`
    when a strict (fp32) variant does not reproduce PyTorch.
    """
    from engine.data.tensors import load_split
    from engine.training.augment import normalize
    from engine.training.checkpoint import load_checkpoint_model

    say = progress or (lambda message: None)
    variants = check_variants(["fp32", *variants])
    run = Run(run_dir)
    config = run.config()
    if not run.best_checkpoint.is_file():
        state = run.status().get("state")
        raise UserError(f"run '{run.id}' has no trained weights yet (state: {state}); train it first")
    model, _cfg, classes = load_checkpoint_model(run.best_checkpoint)
    resolved = run.resolved()
    size, mean, std = resolved.image_size, resolved.mean, resolved.std

    say("scoring the validation split with PyTorch")
    val = load_split(config, "val", size, classes)
    if len(val) == 0:
        raise UserError(f"run '{run.id}' has no validation images to check the export against")
    calibration = export_temperature(
        run.path, lambda: (torch_logits(model, normalize(val.images, mean, std)), val.labels.numpy()))
    record = preprocess_record(config, classes, calibration["temperature"])

    run.export_dir.mkdir(exist_ok=True)
    for stale in VARIANT_FILES.values():  # derived files of an older export would not match
        if stale != "model.onnx":
            (run.export_dir / stale).unlink(missing_ok=True)
    timings = {}
    t0 = time.time()
    say("exporting fp32 (torch.onnx.export, dynamo)")
    fp32 = variant_path(run, "fp32")
    # Two outputs: logits, and the pooled features prediction scores out-of-distribution images with.
    net = WithFeatures(model).eval()
    onnx_export(net, torch.randn(2, 3, size, size), fp32, OUTPUTS)
    add_metadata(fp32, variant_record(record, "fp32"))
    write_json_atomic(run.export_dir / "preprocess.json", record)
    timings["fp32"] = time.time() - t0
    quant_info = None
    for v in variants[1:]:
        t0 = time.time()
        path = variant_path(run, v)
        say(f"building {v}")
        if v == "fp32-uint8in":
            pixels = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
            onnx_export(Uint8Input(net, mean, std).eval(), pixels, path, OUTPUTS)
            add_metadata(path, variant_record(record, v))
        elif v == "fp16":
            from engine.export.quantize import convert_fp16

            convert_fp16(fp32, path)
            add_metadata(path, variant_record(record, v))
        elif v == "int8":
            from engine.export.quantize import INT8_CALIBRATION_IMAGES, INT8_HOLDOUT_IMAGES, quantize_int8

            train = load_split(config, "train", size, classes)
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
            pick = order[:INT8_CALIBRATION_IMAGES]
            # Other training images choose which nodes stay in float; validation only reports each choice.
            holdout = order[INT8_CALIBRATION_IMAGES : INT8_CALIBRATION_IMAGES + INT8_HOLDOUT_IMAGES]
            quant_info = quantize_int8(fp32, path, normalize(train.images[pick], mean, std).numpy(),
                                       holdout=normalize(train.images[holdout], mean, std).numpy(),
                                       report=(normalize(val.images, mean, std).numpy(), val.labels.numpy()))
            add_metadata(path, variant_record(record, v))
        timings[v] = time.time() - t0

    parity = check_parity(run.path, max_parity_images=max_parity_images, progress=progress,
                          _model=(model, classes), _val=val)
    parity["temperature"] = calibration
    parity["opset"] = OPSET
    for v, seconds in timings.items():
        parity["variants"][v]["export_seconds"] = round(seconds, 2)
    if quant_info:
        parity["variants"]["int8"]["quantization"] = quant_info
    parity["export_seconds"] = parity["variants"]["fp32"]["export_seconds"]
    write_json_atomic(run.export_dir / "parity.json", parity)
    raise_if_failed(parity)
    return parity
