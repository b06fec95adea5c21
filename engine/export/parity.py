"""The parity gate: every exported variant scored against PyTorch on the whole validation split.

The fp32 variants must reproduce PyTorch (top-1 on every image, logits within
``PARITY_ATOL``); a failure blocks the bundle. Lossy variants (fp16, int8)
report their cost (accuracy change, flipped images) and the user decides.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.export.variants import STRICT_VARIANTS, VARIANTS, variant_path
from engine.runs import Run
from engine.workspace import file_sha256, read_json, write_json_atomic

__all__ = ["check_parity", "gate_failure", "raise_if_failed", "torch_logits", "gate_label", "parity_rows",
           "ExportParityError", "PARITY_ATOL"]

# Logit tolerance: fp32 kernels differ between PyTorch and onnxruntime by ~1e-5.
PARITY_ATOL = 1e-3


class ExportParityError(RuntimeError):
    """The exported model does not reproduce the PyTorch model."""


def torch_logits(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Logits of ``model`` on the normalised batch ``x``, in chunks of 64, as numpy."""
    with torch.no_grad():
        out = [model(x[i : i + 64]) for i in range(0, len(x), 64)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)



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
    from engine.data.tensors import load_split
    from engine.export.inference import OnnxClassifier
    from engine.training.augment import normalize
    from engine.training.checkpoint import load_checkpoint_model

    say = progress or (lambda message: None)
    run = Run(run_dir)
    config = run.config()
    model, classes = _model or load_checkpoint_model(run.best_checkpoint)[::2]
    resolved = run.resolved()
    size, mean, std = resolved.image_size, resolved.mean, resolved.std
    val = _val if _val is not None else load_split(config, "val", size, classes)
    n = len(val) if max_parity_images is None else min(len(val), max_parity_images)
    images, labels, paths = val.images[:n], val.labels[:n].numpy(), val.paths[:n]
    x = normalize(images, mean, std)
    reference = torch_logits(model, x)
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
            strict = variant in STRICT_VARIANTS
            reports[variant] = {"variant": variant, "file": path.name, "passed": False if strict else None,
                                "gate": "strict" if strict else "report", "error": str(exc)}
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


def raise_if_failed(parity: dict) -> None:
    """Raise :class:`ExportParityError` with the reason when the strict gate did not pass."""
    failure = gate_failure(parity)
    if failure:
        raise ExportParityError(failure)


def gate_label(report: dict) -> str:
    """What the gate says of one variant: its error, passed/FAILED (strict variants) or reported (lossy ones)."""
    if report.get("error"):
        return report["error"]
    if report.get("gate") == "strict":
        return "passed" if report.get("passed") else "FAILED"
    return "reported"


def parity_rows(parity: dict) -> list[dict]:
    """One row per checked variant: the parity table the Export page, the CLI and the model card show."""
    rows = []
    for v, r in (parity.get("variants") or {}).items():
        rows.append({
            "variant": v,
            "file": r.get("file"),
            "MB": round(r.get("bytes", 0) / 1e6, 2),
            "gate": r.get("gate"),
            "result": gate_label(r),
            "top-1 agreement %": round(100 * r.get("top1_agreement", 0), 2),
            "max |logit diff|": r.get("max_abs_logit_diff"),
            "mean |logit diff|": r.get("mean_abs_logit_diff"),
            "accuracy %": round(100 * r.get("accuracy", 0), 2),
            "Δ accuracy (points)": r.get("accuracy_delta_points"),
            "images flipped": len(r.get("flipped", [])),
        })
    return rows
