"""The download bundle: models, labels, preprocessing, model card and a standalone predict.py.

When the run has been evaluated, the bundle also carries a compact out-of-distribution reference
(:mod:`engine.export.bundle_reference`), so predict.py flags images unlike the training data and tests a
batch of them, as the app does.

Built only from an export whose strict (fp32) parity gate passed, and only
from model files whose bytes are the ones the gate checked (sha256).
"""
from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np

from engine.errors import UserError
from engine.export.parity import gate_failure, parity_rows
from engine.export.variants import STRICT_VARIANTS, VARIANTS, variant_path
from engine.runs import Run
from engine.workspace import atomic_path, file_sha256, read_json

__all__ = ["build_bundle", "unchanged_variants", "model_card", "BundleBlocked", "PREDICT_TEMPLATE"]

PREDICT_TEMPLATE = Path(__file__).with_name("bundle_predict.py")


class BundleBlocked(UserError):
    """The export cannot be shipped (parity gate failed or files changed since)."""


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def model_card(run: Run, parity: dict, variants: list[str], flags: bool = False) -> str:
    config = run.config()
    resolved = run.resolved()
    evaluation = run.evaluation() or {}
    pre = read_json(run.export_dir / "preprocess.json", default={}) or {}
    t = parity.get("temperature") or {}
    lines = [
        f"# Model card: {config['backbone']} image classifier ({run.id})",
        "",
        "## Data",
        f"- Dataset: `{resolved.dataset_name or config.get('dataset')}` "
        f"(fingerprint `{resolved.dataset_fingerprint or 'n/a'}`)",
        f"- Classes ({len(pre.get('classes', []))}): {', '.join(pre.get('classes', []))}",
        f"- Images: {resolved.num_train} training, {resolved.num_val} validation "
        f"(validation fraction {config.get('val_fraction')}, seed {config.get('seed')})",
        "",
        "## Model and recipe",
        f"- Backbone: `{config['backbone']}` (ImageNet-pretrained unless mode is scratch), mode `{config['mode']}`",
        f"- Input: {pre.get('input_size')} px RGB; {pre.get('resize')}; {pre.get('crop')}; "
        f"mean {pre.get('mean')}, std {pre.get('std')}",
        f"- Training: {config.get('epochs')} epochs, lr {config.get('lr')}, batch {config.get('batch_size')}, "
        f"augmentation `{config.get('augment')}`, label smoothing {config.get('label_smoothing')}, "
        f"weight decay {config.get('weight_decay')}",
        f"- Probabilities: softmax(logits / {pre.get('temperature', 1.0)}) "
        + (f"(temperature fitted on {t.get('images')} validation images: NLL {t['nll_before']:.4f} -> "
           f"{t['nll_after']:.4f}, ECE {t['ece_before']:.4f} -> {t['ece_after']:.4f})" if t.get("fitted")
           else f"({t.get('reason', 'no temperature fitted')})"),
        "",
        "## Validation metrics (PyTorch, best checkpoint)",
        f"- Accuracy {_pct(evaluation.get('accuracy'))}, macro F1 {evaluation.get('macro_f1', 'n/a')} "
        f"on {evaluation.get('num_images', '?')} images",
        "",
        "## Export parity (whole validation split, against PyTorch)",
        "",
        "| variant | file | MB | top-1 agreement | max abs logit diff | accuracy | change (points) | gate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in parity_rows(parity):
        if r["variant"] in variants:
            lines.append(f"| {r['variant']} | {r['file']} | {r['MB']:.2f} | {r['top-1 agreement %']:.2f}% | "
                         f"{r['max |logit diff|']:.2e} | {r['accuracy %']:.2f}% | {r['Δ accuracy (points)']:+.2f} | "
                         f"{r['result']} |")
    lines += [
        "",
        "## Use",
        "`pip install onnxruntime numpy Pillow`, then `python predict.py image.jpg [--model model.int8.onnx]`.",
        "predict.py applies the exact preprocessing above and prints the top classes with probabilities.",
        *(["With `ood_reference.npz` beside it, each image also gets `unlike_training` (its distance to the "
           "nearest training features is beyond what 99 % of validation images scored) and, for 5 images or "
           "more, a last line tests the whole batch against the training data (MMD permutation test). The "
           "reference is a quantised sample of training features, not the training images."] if flags else []),
        "",
        "## Intended use and limits",
        "- Classifies an image into exactly one of the classes above; it has no 'none of these' answer, "
        "so images of anything else still get one of these labels, often with high probability.",
        "- Accuracy was measured on a validation split drawn from the same source as the training data; expect "
        "lower accuracy on images from other cameras, lighting or framing. Check it on your own data first.",
        "- Not for decisions about people (identity, health, employment, credit) or safety-critical use without "
        "a separate, representative evaluation.",
        "- The int8 and fp16 files trade the accuracy change shown above for size/speed; fp32 reproduces PyTorch.",
        "",
        f"_Generated by Transfer Studio on {time.strftime('%Y-%m-%d %H:%M')}; opset {parity.get('opset', 'n/a')}._",
    ]
    return "\n".join(lines) + "\n"


def _ood_reference_bytes(run: Run) -> bytes | None:
    from engine.evaluation import run_ood_reference
    from engine.export.bundle_reference import compact_reference_bytes

    ood = run_ood_reference(run.path)
    return None if ood is None or not np.isfinite(ood.threshold) else compact_reference_bytes(ood)


def unchanged_variants(run: Run, parity: dict) -> list[str]:
    """The checked variants whose model file still holds the bytes the parity gate checked (sha256)."""
    checked = parity.get("variants") or {}
    return [v for v in VARIANTS if "sha256" in checked.get(v, {}) and variant_path(run, v).is_file()
            and file_sha256(variant_path(run, v)) == checked[v]["sha256"]]


def build_bundle(run_dir: Path | str, variants: list[str] | None = None) -> Path:
    """Write ``export/bundle.zip`` (atomically) and return its path.

    ``variants``: which exported models to include (default: every one the
    gate checked). Raises :class:`BundleBlocked` when the strict gate failed or
    a model file changed after it was checked.
    """
    run = Run(run_dir)
    parity = read_json(run.export_dir / "parity.json")
    failure = gate_failure(parity)
    if failure:
        raise BundleBlocked(f"download blocked: {failure}; re-export the run (and check the model) first")
    checked = parity.get("variants") or {}
    chosen = list(variants) if variants else [v for v in VARIANTS if v in checked]
    unchanged = unchanged_variants(run, parity)
    for v in dict.fromkeys(["fp32", *chosen]):
        if v not in checked or "sha256" not in checked[v]:
            raise BundleBlocked(f"download blocked: variant '{v}' was not exported and checked; export it first")
        if v not in unchanged:
            raise BundleBlocked(f"download blocked: {variant_path(run, v).name} changed after its parity check; "
                                "re-export the run")
        if v in STRICT_VARIANTS and not checked[v]["passed"]:
            raise BundleBlocked(f"download blocked: {v} failed its parity gate")
    chosen = list(dict.fromkeys(["fp32", *chosen]))
    classes = read_json(run.export_dir / "preprocess.json", default={}).get("classes", [])
    reference = _ood_reference_bytes(run)
    out = run.export_dir / "bundle.zip"
    folder = f"transfer-studio-{run.id}"
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for v in chosen:
            zf.write(variant_path(run, v), f"{folder}/{variant_path(run, v).name}")
        zf.write(run.export_dir / "preprocess.json", f"{folder}/preprocess.json")
        zf.writestr(f"{folder}/parity.json", json.dumps(
            {k: val for k, val in parity.items() if k != "variants"} | {"variants": {v: checked[v] for v in chosen}},
            indent=2))
        zf.writestr(f"{folder}/labels.txt", "\n".join(classes) + "\n")
        zf.writestr(f"{folder}/MODEL_CARD.md", model_card(run, parity, chosen, reference is not None))
        zf.write(PREDICT_TEMPLATE, f"{folder}/predict.py")
        if reference is not None:
            zf.writestr(f"{folder}/ood_reference.npz", reference)
        zf.writestr(f"{folder}/requirements.txt", "onnxruntime\nnumpy\nPillow\n")
    return out
