"""ONNX export with its preprocessing recorded, and a parity gate against PyTorch.

Files under ``RUN_DIR/export/``::

    model.onnx            fp32, float32 NCHW normalised input (always written)
    model.uint8in.onnx    fp32 with normalisation in the graph: uint8 RGB NHWC in
    model.fp16.onnx       fp16 weights/compute, float32 IO (for GPUs)
    model.int8.onnx       static int8 QDQ, per-channel, calibrated on training images
    preprocess.json       the preprocessing every consumer must apply
    parity.json           the gate: per variant, agreement with PyTorch on the
                          whole validation split, logit error, accuracy, flips

The fp32 variants must reproduce PyTorch (top-1 on every image, logits within
``PARITY_ATOL``); a failure raises :class:`ExportParityError` and blocks the
bundle. Lossy variants (fp16, int8) report their cost and the user decides.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.runs import Run
from engine.workspace import read_json, write_json_atomic

__all__ = [
    "export_run",
    "check_parity",
    "preprocess_record",
    "fit_temperature",
    "variant_path",
    "file_sha256",
    "gate_failure",
    "start_export_job",
    "export_job_state",
    "ExportParityError",
    "PARITY_ATOL",
    "OPSET",
    "VARIANTS",
    "STRICT_VARIANTS",
]

# Logit tolerance: fp32 kernels differ between PyTorch and onnxruntime by ~1e-5.
PARITY_ATOL = 1e-3
# Opset 20 loads in onnxruntime >= 1.17; the consumer's runtime matters more than ours.
OPSET = 20
VARIANTS = ("fp32", "fp32-uint8in", "fp16", "int8")
VARIANT_FILES = {"fp32": "model.onnx", "fp32-uint8in": "model.uint8in.onnx",
                 "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
STRICT_VARIANTS = ("fp32", "fp32-uint8in")
# Temperature fitted on fewer validation images than this overfits; record 1.0.
MIN_TEMPERATURE_IMAGES = 100


class ExportParityError(RuntimeError):
    """The exported model does not reproduce the PyTorch model."""


def variant_path(run: Run, variant: str) -> Path:
    if variant not in VARIANT_FILES:
        raise UserError(f"unknown export variant '{variant}'; choose from: {', '.join(VARIANTS)}")
    return run.export_dir / VARIANT_FILES[variant]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def preprocess_record(config: dict, classes: list[str], temperature: float = 1.0) -> dict:
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


def _variant_record(record: dict, variant: str) -> dict:
    out = dict(record, variant=variant)
    if variant == "fp32-uint8in":
        out.update(input_layout="NHWC", input_dtype="uint8", scale=None,
                   normalize="in the graph: feed the resized, cropped RGB pixels as uint8")
    if variant == "fp16":
        out["precision"] = "fp16 weights and compute; float32 input and output"
    if variant == "int8":
        out["precision"] = "int8 weights (per-channel) and uint8 activations (QDQ); float32 input and output"
    return out


# ---------------------------------------------------------------- calibration

def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def _ece(logits: np.ndarray, labels: np.ndarray, t: float, bins: int = 15) -> float:
    z = logits / t
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(float((pred[m] == labels[m]).mean()) - float(conf[m].mean()))
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Temperature scaling (Guo et al. 2017): the T minimising validation NLL.

    NLL is convex in 1/T, so a golden-section search on log T finds it.
    With too few images, T=1.0 is recorded instead, with the reason.
    """
    n = len(labels)
    if n < MIN_TEMPERATURE_IMAGES:
        return {"temperature": 1.0, "fitted": False, "images": n,
                "reason": f"only {n} validation images (< {MIN_TEMPERATURE_IMAGES}); a fitted temperature would overfit"}
    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(60):
        if _nll(logits, labels, np.exp(a)) < _nll(logits, labels, np.exp(b)):
            hi = b
        else:
            lo = a
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    t = float(np.exp((lo + hi) / 2))
    return {"temperature": round(t, 4), "fitted": True, "images": n, "method": "validation NLL (temperature scaling)",
            "nll_before": _nll(logits, labels, 1.0), "nll_after": _nll(logits, labels, round(t, 4)),
            "ece_before": _ece(logits, labels, 1.0), "ece_after": _ece(logits, labels, round(t, 4))}


# ---------------------------------------------------------------- export

class _Uint8Input(torch.nn.Module):
    """uint8 NHWC RGB pixels -> the normalisation training used -> the model."""

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return self.model((x - self.mean) / self.std)


def _onnx_export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["image"],
        output_names=["logits"],
        opset_version=OPSET,
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
    proto.doc_string = f"Transfer Studio {record['backbone']} classifier ({record.get('variant', 'fp32')})"
    onnx.checker.check_model(proto)
    tmp = path.with_suffix(".partial.onnx")
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def _load_split(config: dict, split: str, size: int, classes: list[str]):
    from engine.data.dataset import load_dataset
    from engine.data.tensors import decode_split

    dataset = load_dataset(config["dataset"], val_fraction=config.get("val_fraction", 0.2), seed=config.get("seed", 0))
    return decode_split(dataset, split, size, classes)


def _torch_logits(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = [model(x[i : i + 64]) for i in range(0, len(x), 64)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


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
    from engine.training.augment import normalize
    from engine.training.runner import load_checkpoint_model

    say = progress or (lambda message: None)
    variants = list(dict.fromkeys(["fp32", *variants]))
    for v in variants:
        if v not in VARIANTS:
            raise UserError(f"unknown export variant '{v}'; choose from: {', '.join(VARIANTS)}")
    run = Run(run_dir)
    config = run.config()
    if not run.best_checkpoint.is_file():
        raise UserError(f"run '{run.id}' has no trained weights yet (state: {run.status().get('state')}); train it first")
    model, _cfg, classes = load_checkpoint_model(run.best_checkpoint)
    size = config["resolved"]["image_size"]
    mean, std = config["resolved"]["mean"], config["resolved"]["std"]

    say("scoring the validation split with PyTorch")
    val = _load_split(config, "val", size, classes)
    if len(val) == 0:
        raise UserError(f"run '{run.id}' has no validation images to check the export against")
    calibration = fit_temperature(_torch_logits(model, normalize(val.images, mean, std)), val.labels.numpy())
    record = preprocess_record(config, classes, calibration["temperature"])

    run.export_dir.mkdir(exist_ok=True)
    for stale in VARIANT_FILES.values():  # derived files of an older export would not match
        if stale != "model.onnx":
            (run.export_dir / stale).unlink(missing_ok=True)
    timings = {}
    t0 = time.time()
    say("exporting fp32 (torch.onnx.export, dynamo)")
    fp32 = variant_path(run, "fp32")
    _onnx_export(model, torch.randn(2, 3, size, size), fp32)
    _add_metadata(fp32, _variant_record(record, "fp32"))
    write_json_atomic(run.export_dir / "preprocess.json", record)
    timings["fp32"] = time.time() - t0
    quant_info = None
    for v in variants[1:]:
        t0 = time.time()
        path = variant_path(run, v)
        say(f"building {v}")
        if v == "fp32-uint8in":
            _onnx_export(_Uint8Input(model, mean, std).eval(), torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8),
                         path)
            _add_metadata(path, _variant_record(record, v))
        elif v == "fp16":
            from engine.quantize import convert_fp16

            convert_fp16(fp32, path)
            _add_metadata(path, _variant_record(record, v))
        elif v == "int8":
            from engine.quantize import INT8_CALIBRATION_IMAGES, quantize_int8

            train = _load_split(config, "train", size, classes)
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:INT8_CALIBRATION_IMAGES]
            quant_info = quantize_int8(fp32, path, normalize(train.images[pick], mean, std).numpy())
            _add_metadata(path, _variant_record(record, v))
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
    _raise_if_failed(parity)
    return parity


# ---------------------------------------------------------------- the gate

def _variant_report(variant: str, path: Path, reference: np.ndarray, got: np.ndarray,
                    labels: np.ndarray, classes: list[str], paths: list[str]) -> dict:
    ref_top, got_top = reference.argmax(1), got.argmax(1)
    diff = np.abs(reference - got)
    flips = np.flatnonzero(ref_top != got_top)
    by_class: dict[str, list[str]] = {}
    for i in flips:
        by_class.setdefault(classes[labels[i]], []).append(paths[i])
    ref_acc, acc = float((ref_top == labels).mean()), float((got_top == labels).mean())
    strict = variant in STRICT_VARIANTS
    agreement = float((ref_top == got_top).mean())
    return {
        "variant": variant,
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "gate": "strict" if strict else "report",
        "images": int(len(labels)),
        "top1_agreement": agreement,
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "tolerance": PARITY_ATOL if strict else None,
        "pytorch_accuracy": ref_acc,
        "accuracy": acc,
        "accuracy_delta_points": round(100 * (acc - ref_acc), 3),
        "flipped": [{"image": paths[i], "label": classes[labels[i]], "pytorch": classes[ref_top[i]],
                     "onnx": classes[got_top[i]]} for i in flips],
        "flipped_by_class": by_class,
        # Lossy variants have no pass/fail: their cost is reported, the user decides.
        "passed": bool(agreement == 1.0 and diff.max() <= PARITY_ATOL) if strict else None,
    }


def check_parity(
    run_dir: Path | str,
    max_parity_images: int | None = None,
    progress: Callable[[str], None] | None = None,
    _model=None,
    _val=None,
) -> dict:
    """Score every exported variant in ``export/`` against PyTorch on the validation split.

    Re-runnable on its own (e.g. after copying a model file in): the result
    is written to ``export/parity.json``; the caller decides what to raise.
    """
    from engine.inference import OnnxClassifier
    from engine.training.augment import normalize
    from engine.training.runner import load_checkpoint_model

    say = progress or (lambda message: None)
    run = Run(run_dir)
    config = run.config()
    model, classes = _model or load_checkpoint_model(run.best_checkpoint)[::2]
    size, mean, std = config["resolved"]["image_size"], config["resolved"]["mean"], config["resolved"]["std"]
    val = _val if _val is not None else _load_split(config, "val", size, classes)
    n = len(val) if max_parity_images is None else min(len(val), max_parity_images)
    images, labels, paths = val.images[:n], val.labels[:n].numpy(), val.paths[:n]
    x = normalize(images, mean, std)
    reference = _torch_logits(model, x)
    previous = read_json(run.export_dir / "parity.json", default={}) or {}
    reports = {}
    for variant in VARIANTS:
        path = variant_path(run, variant)
        if not path.is_file():
            continue
        say(f"checking {variant} against PyTorch on {n} validation images")
        t0 = time.time()
        try:
            session = OnnxClassifier(path)
            feed = images.permute(0, 2, 3, 1).numpy() if session.input_dtype == "uint8" else x.numpy()
            got = session.logits(feed)
        except UserError as exc:
            reports[variant] = {"variant": variant, "file": path.name, "passed": False if variant in STRICT_VARIANTS else None,
                                "gate": "strict" if variant in STRICT_VARIANTS else "report", "error": str(exc)}
            continue
        report = _variant_report(variant, path, reference, got, labels, classes, paths)
        report["check_seconds"] = round(time.time() - t0, 2)
        old = (previous.get("variants") or {}).get(variant, {})
        if "export_seconds" in old:
            report["export_seconds"] = old["export_seconds"]
        reports[variant] = report
    if "fp32" not in reports:
        raise UserError(f"run '{run.id}' has no exported model.onnx; export it first")
    fp32 = reports["fp32"]
    parity = {
        # Top level: the fp32 gate, as every consumer of parity.json has read it.
        "images": n,
        "passed": bool(fp32["passed"]) and all(reports[v]["passed"] for v in STRICT_VARIANTS if v in reports),
        "top1_agreement": fp32.get("top1_agreement", 0.0),
        "max_abs_logit_diff": fp32.get("max_abs_logit_diff", float("inf")),
        "mean_abs_logit_diff": fp32.get("mean_abs_logit_diff", float("inf")),
        "tolerance": PARITY_ATOL,
        "pytorch_accuracy": float((reference.argmax(1) == labels).mean()),
        "onnx_bytes": fp32.get("bytes"),
        "checked_at": time.time(),
        "variants": reports,
    }
    for key in ("temperature", "opset", "export_seconds"):
        if key in previous:
            parity[key] = previous[key]
    write_json_atomic(run.export_dir / "parity.json", parity)
    return parity


def gate_failure(parity: dict | None) -> str | None:
    """Why the strict gate blocks this export, or None when it passed."""
    if not parity:
        return "the run has not been exported and checked yet"
    if parity.get("passed"):
        return None
    variants = parity.get("variants") or {"fp32": dict(parity, variant="fp32", file="model.onnx")}
    bad = [r for v, r in variants.items() if v in STRICT_VARIANTS and not r.get("passed")]
    if not bad:
        return "the parity gate did not pass"
    r = bad[0]
    if "error" in r:
        return f"{r['file']} could not be checked: {r['error']}"
    return (f"exported {r['variant']} model disagrees with PyTorch: top-1 agreement {r['top1_agreement']:.4f}, "
            f"max |logit diff| {r['max_abs_logit_diff']:.2e} (tolerance {PARITY_ATOL})")


def _raise_if_failed(parity: dict) -> None:
    failure = gate_failure(parity)
    if failure:
        raise ExportParityError(failure)


# ---------------------------------------------------------------- background export

# Export of a 224 px model with every variant takes about a minute on 2 cores: too long
# for a page script, so the page starts ``python -m engine export`` as its own process.
_JOBS: dict[str, "subprocess.Popen"] = {}


def export_job_state(run_dir: Path | str) -> dict | None:
    """``export/job.json`` with ``state`` brought up to date: running | done | failed."""
    run = Run(run_dir)
    job = read_json(run.export_dir / "job.json")
    if not job or job.get("state") != "running":
        return job
    proc = _JOBS.get(str(run.path))
    if proc is not None:
        code = proc.poll()
        alive = code is None
    else:  # started by another server process: ask the OS
        import os

        try:
            os.kill(int(job["pid"]), 0)
            alive = True
        except (OSError, ValueError):
            alive, code = False, None
    if alive:
        return job
    log = run.export_dir / "export.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
    job.update(state="done" if code == 0 else "failed", exit_code=code, finished_at=time.time(),
               message=tail[0] if tail else "")
    write_json_atomic(run.export_dir / "job.json", job)
    _JOBS.pop(str(run.path), None)
    return job


def start_export_job(run_dir: Path | str, variants: list[str]) -> dict:
    """Start ``python -m engine export RUN_DIR --variants ...`` detached; refuse a second one for the run."""
    import subprocess
    import sys

    run = Run(run_dir)
    for v in variants:
        variant_path(run, v)  # unknown names fail here, not in the child
    if not run.best_checkpoint.is_file():
        raise UserError(f"run '{run.id}' has no trained weights yet; train it first")
    state = export_job_state(run.path)
    if state and state.get("state") == "running":
        raise UserError("an export of this run is already running; wait for it to finish")
    run.export_dir.mkdir(parents=True, exist_ok=True)
    with open(run.export_dir / "export.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "export", str(run.path), "--variants", ",".join(variants)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    _JOBS[str(run.path)] = proc
    job = {"state": "running", "pid": proc.pid, "variants": list(variants), "started_at": time.time()}
    write_json_atomic(run.export_dir / "job.json", job)
    return job
