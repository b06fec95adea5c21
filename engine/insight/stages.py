"""Which layers transfer: a linear probe on the pooled output of every backbone stage, input to output.

Forward hooks on ``TransferModel.stages()`` collect each stage's output, averaged
over space; the features of a (per-class capped) training sample and the whole
validation split are cached on disk under ``cache_dir()/insight``. Every stage gets
the same probe (``fit_probe`` with one fixed ``C``), so the curve compares layers,
not regularisation.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from engine.data.dataset import Dataset
from engine.data.tensors import decode_split
from engine.training.probe import fit_probe
from engine.workspace import atomic_path, cache_dir

__all__ = ["stage_features", "stage_probe", "stage_reading"]

Progress = Callable[[str], None]


def _hook_target(stage: nn.Module) -> nn.Module | None:
    """The module whose output is the stage's output (a ModuleList's last member); None for loose parameters."""
    if isinstance(stage, nn.ParameterList):
        return None
    if isinstance(stage, nn.ModuleList):
        return stage[-1] if len(stage) else None
    return stage


@torch.no_grad()
def _pooled_stage_outputs(model, images: torch.Tensor, mean, std, batch_size: int = 64) -> list[np.ndarray]:
    outputs: dict[int, list[np.ndarray]] = {}
    handles = []
    targets = [_hook_target(s) for s in model.stages()]
    for i, target in enumerate(targets):
        if target is None:
            continue

        def hook(_module, _inputs, out, i=i):
            out = out.float()
            pooled = out.mean(dim=(2, 3)) if out.dim() == 4 else out.reshape(len(out), -1)
            outputs.setdefault(i, []).append(pooled.numpy())

        handles.append(target.register_forward_hook(hook))
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            model.forward_features((images[start : start + batch_size].float() / 255.0 - m) / s)
    finally:
        for h in handles:
            h.remove()
    return [np.concatenate(outputs[i]).astype(np.float32) for i in sorted(outputs)]


def stage_features(dataset: Dataset, split: str, backbone: str, size: int, max_per_class: int | None = None,
                   seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """(pooled features of every stage, labels) of ``split``, at most ``max_per_class`` images a class."""
    from engine.features.extract import backbone_key
    from engine.insight.curve import per_class_subset
    from engine.models import create_model, get_spec

    key = hashlib.sha256(f"{dataset.fingerprint()}|{split}|{backbone_key(backbone, size)}|{max_per_class}|{seed}"
                         .encode()).hexdigest()[:20]
    path = cache_dir() / "insight" / f"stages-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as blob:
                count = int(blob["count"])
                return [blob[f"s{i}"] for i in range(count)], blob["labels"]
        except Exception:
            path.unlink(missing_ok=True)
    tensors = decode_split(dataset, split, size, dataset.classes)
    labels = tensors.labels.numpy()
    idx = (per_class_subset(labels, max_per_class, np.random.default_rng(seed)) if max_per_class
           else np.arange(len(labels)))
    spec = get_spec(backbone)
    model = create_model(backbone, max(2, len(dataset.classes)), pretrained=True, image_size=size)
    feats = _pooled_stage_outputs(model, tensors.images[torch.from_numpy(idx)], spec.mean, spec.std)
    labels = labels[idx]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            arrays: dict[str, np.ndarray] = {f"s{i}": x for i, x in enumerate(feats)}
            np.savez(f, count=np.array(len(feats)), labels=labels, **arrays)  # type: ignore[arg-type]
    return feats, labels


def stage_reading(rows: list[dict]) -> dict:
    """Where the per-stage accuracy peaks, and what that means for training, in one sentence."""
    accs = [r["accuracy"] for r in rows]
    last = len(rows) - 1
    peak = int(np.argmax(accs))
    drop = accs[peak] - accs[last]
    tolerance = max(0.01, rows[last]["se"])
    if drop <= tolerance:
        text = (f"Accuracy rises to the last stage ({100 * accs[last]:.1f}%): the late features suit this data, "
                "so a linear probe on the last stage is enough.")
        return {"peak_stage": peak, "last_stage": last, "drop": round(drop, 4), "unfreeze": 0, "text": text}
    unfreeze = last - peak
    text = (f"Accuracy peaks at stage {peak} of {last} ({100 * accs[peak]:.1f}%) and falls "
            f"{100 * drop:.1f} points by the last stage: the late, ImageNet-specific features suit this data less, "
            f"so unfreezing the last {unfreeze} stages (or a probe on stage {peak}) should pay.")
    return {"peak_stage": peak, "last_stage": last, "drop": round(drop, 4), "unfreeze": unfreeze, "text": text}


def stage_probe(dataset: Dataset, backbone: str, size: int, max_per_class: int = 100, C: float | None = None,
                seed: int = 0, progress: Progress | None = None) -> dict:
    """Validation accuracy of a linear probe on each stage's pooled features (one row per stage)."""
    train_feats, train_y = stage_features(dataset, "train", backbone, size, max_per_class, seed)
    if progress:
        progress(f"stages: {len(train_feats)} stages' features of {len(train_y)} training images")
    val_feats, val_y = stage_features(dataset, "val", backbone, size, None, seed)
    k = len(dataset.classes)
    if C is None:
        C = fit_probe(train_feats[-1], train_y, k, seed=seed).C
    rows = []
    for i, (x_tr, x_va) in enumerate(zip(train_feats, val_feats)):
        fit = fit_probe(x_tr, train_y, k, C=C, seed=seed)
        acc = float((fit.logits(x_va).argmax(1) == val_y).mean())
        rows.append({"stage": i, "channels": int(x_tr.shape[1]), "accuracy": acc,
                     "se": math.sqrt(acc * (1 - acc) / len(val_y)) if len(val_y) else float("nan")})
    return {"rows": rows, "C": float(C), "train_images": int(len(train_y)), "val_images": int(len(val_y)),
            "reading": stage_reading(rows)}
