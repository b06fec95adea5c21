"""Evaluate a finished run once and keep the result in its run directory.

Files under ``RUN_DIR/evaluation/``::

    evaluation.json       headline metrics with 95 % bootstrap intervals, per-class table,
                          confusion matrix, calibration (temperature, reliability, ECE),
                          threshold curve, OOD calibration, overfitting reading, galleries
    predictions.parquet   one row per validation image: path, file, true/predicted class,
                          calibrated probabilities, confidence, OOD score
    ood_reference.npz     training features + validation OOD scores (see :mod:`engine.evaluation.ood`)
    task.json, task.log   the background evaluation started by a page

The fitted temperature stored here is the one export and prediction use.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine.errors import UserError
from engine.evaluation.calibration import fit_temperature, reliability, softmax
from engine.evaluation.compare import compare_predictions
from engine.evaluation.curves import overfitting, threshold_curve
from engine.evaluation.metrics import BOOTSTRAP_RESAMPLES, confusion, headline_metrics, per_class_table
from engine.evaluation.ood import OODReference, build_reference, load_reference
from engine.idle_cache import IdleCache
from engine.runs import Run
from engine.workspace import atomic_path, file_sha256, read_json, write_json_atomic

__all__ = ["evaluate_run", "load_evaluation", "RunEvaluation", "evaluation_dir",
           "run_temperature", "run_ood_reference", "activation_maps", "compare_runs",
           "GALLERY_SIZE", "EVALUATION_FORMAT"]

EVALUATION_FORMAT = 1
GALLERY_SIZE = 24
_BATCH = 64


def evaluation_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / "evaluation"


def _files(run_dir) -> dict[str, Path]:
    folder = evaluation_dir(run_dir)
    return {"summary": folder / "evaluation.json", "predictions": folder / "predictions.parquet",
            "ood": folder / "ood_reference.npz"}


def _load_splits(config: dict, classes: list[str]):
    """The dataset root and its validation and training images, decoded as training saw them (cached)."""
    from engine.data.dataset import load_dataset
    from engine.data.tensors import decode_split

    dataset = load_dataset(config["dataset"], val_fraction=config.get("val_fraction", 0.2), seed=config.get("seed", 0))
    size = config["resolved"]["image_size"]
    return dataset.root, decode_split(dataset, "val", size, classes), decode_split(dataset, "train", size, classes)


def _probe_splits(config: dict, classes: list[str]):
    """The dataset root and the validation and training features of a linear probe's frozen backbone
    (cached by training: no image is decoded; computed in chunks when absent)."""
    from engine.data.dataset import load_dataset
    from engine.features import split_features

    dataset = load_dataset(config["dataset"], val_fraction=config.get("val_fraction", 0.2), seed=config.get("seed", 0))
    size = config["resolved"]["image_size"]
    return (dataset.root, *(split_features(dataset, split, config["backbone"], size, classes)
                            for split in ("val", "train")))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _features_and_logits(model, images: torch.Tensor, mean, std, say=None, what="") -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features and logits of uint8 NCHW images, in batches."""
    from engine.training.augment import normalize

    device = next(model.parameters()).device
    feats, logits = [], []
    with torch.no_grad():
        for start in range(0, len(images), _BATCH):
            x = normalize(images[start : start + _BATCH].to(device), mean, std)
            f = model.forward_features(x)
            feats.append(f.float().cpu())
            logits.append(model.head(f).float().cpu())
            if say and (start // _BATCH) % 8 == 0:
                say(f"{what}: {min(start + _BATCH, len(images))}/{len(images)} images")
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def evaluate_run(run_dir: Path | str, progress: Callable[[str], None] | None = None,
                 n_resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Score the run's best weights on its validation split; write and return ``evaluation.json``."""
    from engine.training.runner import load_checkpoint_model

    say = progress or (lambda message: None)
    started = time.time()
    run = Run(run_dir)
    config = run.config()
    if not run.best_checkpoint.is_file():
        raise UserError(f"run '{run.id}' has no trained weights yet (state: {run.status().get('state')}); "
                        "train it first")
    say("loading the best checkpoint")
    model, _cfg, classes = load_checkpoint_model(run.best_checkpoint)
    model = model.to(_device())
    mean, std = config["resolved"]["mean"], config["resolved"]["std"]
    if config.get("mode") == "linear":  # a frozen backbone: its features are the ones training cached
        say("reading the frozen features training cached")
        root, val, train = _probe_splits(config, classes)
        val_feats, train_feats = val.features, train.features
        with torch.no_grad():
            val_logits, train_logits = (model.head(torch.from_numpy(f).to(_device())).float().cpu().numpy()
                                        for f in (val_feats, train_feats))
    else:
        say("decoding the validation and training images")
        root, val, train = _load_splits(config, classes)
        val_feats, val_logits = _features_and_logits(model, val.images, mean, std, say, "validation")
        train_feats, train_logits = _features_and_logits(model, train.images, mean, std, say, "training")
    if len(val) == 0:
        raise UserError(f"run '{run.id}' has no validation images to evaluate on")
    y = np.asarray(val.labels)
    k = len(classes)

    say("calibration: fitting the temperature")
    calibration = fit_temperature(val_logits, y)
    t = calibration["temperature"]
    raw = softmax(val_logits, 1.0)
    probs = softmax(val_logits, t)
    pred = probs.argmax(axis=1)
    correct = pred == y
    confidence = probs.max(axis=1)
    top2 = np.sort(probs, axis=1)[:, -2:] if k > 1 else np.stack([np.zeros(len(y)), confidence], 1)

    say(f"metrics with {n_resamples} bootstrap resamples")
    headline = headline_metrics(y, pred, k, n_resamples=n_resamples)

    say("out-of-distribution reference: nearest training features")
    ood = build_reference(train_feats, val_feats)
    val_ood = ood.val_scores

    table = pd.DataFrame({
        "index": np.arange(len(y)),
        "path": val.paths,
        "file": [str(Path(root) / p) for p in val.paths],
        "label": y.astype(np.int64),
        "label_name": [classes[i] for i in y],
        "pred": pred.astype(np.int64),
        "pred_name": [classes[i] for i in pred],
        "confidence": confidence.astype(np.float64),
        "margin": (top2[:, 1] - top2[:, 0]).astype(np.float64),
        "correct": correct,
        "ood_score": val_ood.astype(np.float64),
        "probs": [row.astype(np.float32) for row in probs],
    })
    mistakes = table[~table["correct"]].sort_values("confidence", ascending=False)
    uncertain = table.sort_values(["margin", "confidence"])
    train_acc = float((train_logits.argmax(1) == np.asarray(train.labels)).mean()) if len(train) else None
    summary = {
        "format": EVALUATION_FORMAT,
        "run": run.id,
        "classes": classes,
        "images": int(len(y)),
        "train_images": int(len(train)),
        "headline": headline,
        "accuracy": headline["accuracy"]["value"],
        "balanced_accuracy": headline["balanced_accuracy"]["value"],
        "macro_f1": headline["macro_f1"]["value"],
        "train_accuracy": train_acc,
        "per_class": per_class_table(y, pred, classes),
        "confusion": confusion(y, pred, k),
        "calibration": calibration,
        "reliability": {"before": reliability(raw.max(1), raw.argmax(1) == y),
                        "after": reliability(confidence, correct)},
        "threshold_curve": threshold_curve(confidence, correct),
        "ood": ood.summary(),
        "overfitting": overfitting(run.metrics()),
        "galleries": {"confident_mistakes": mistakes["index"].head(GALLERY_SIZE).astype(int).tolist(),
                      "least_certain": uncertain["index"].head(GALLERY_SIZE).astype(int).tolist()},
        "checkpoint_sha256": _checkpoint_digest(run),
        "evaluated_at": time.time(),
    }
    files = _files(run.path)
    files["summary"].parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(files["predictions"]) as tmp:
        table.to_parquet(tmp, index=False)
    ood.save(files["ood"])
    summary["seconds"] = round(time.time() - started, 2)
    write_json_atomic(files["summary"], summary)
    say(f"evaluation written in {summary['seconds']:.1f} s")
    return summary


_DIGESTS: dict[tuple[str, float, int], str] = {}


def _checkpoint_digest(run: Run) -> str | None:
    """sha256 of best.pt (cached per path, mtime and size): copies of a run stay evaluated, new weights do not."""
    ckpt = run.best_checkpoint
    if not ckpt.is_file():
        return None
    stat = ckpt.stat()
    key = (str(ckpt.resolve()), stat.st_mtime, stat.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(ckpt)
    return _DIGESTS[key]


def _is_stale(run: Run, summary: dict) -> bool:
    digest = _checkpoint_digest(run)
    return digest is not None and digest != summary.get("checkpoint_sha256")


@dataclass
class RunEvaluation:
    """What the Evaluate page and the CLI read: the summary and the per-image table."""
    run: Run
    summary: dict
    predictions: pd.DataFrame

    @property
    def classes(self) -> list[str]:
        return self.summary["classes"]

    @property
    def stale(self) -> bool:
        """The best checkpoint changed after this evaluation (e.g. the run was resumed)."""
        return _is_stale(self.run, self.summary)

    def cell(self, true_class: str, predicted_class: str) -> pd.DataFrame:
        """The images of one confusion-matrix cell, most confident first."""
        p = self.predictions
        rows = p[(p["label_name"] == true_class) & (p["pred_name"] == predicted_class)]
        return rows.sort_values("confidence", ascending=False)

    def gallery(self, name: str) -> pd.DataFrame:
        """``confident_mistakes`` or ``least_certain``, in their stored order."""
        order = self.summary["galleries"][name]
        return self.predictions.set_index("index").loc[order].reset_index()

    def table(self) -> pd.DataFrame:
        """The per-image table for display and CSV: one probability column per class."""
        p = self.predictions.drop(columns=["probs"]).copy()
        probs = np.stack(self.predictions["probs"].to_numpy()) if len(p) else np.zeros((0, len(self.classes)))
        for i, c in enumerate(self.classes):
            p[f"p({c})"] = probs[:, i]
        return p


def _idle_s() -> float:
    from engine.settings.limits import limits

    return limits().model_idle_minutes * 60


# Per file version, released when no session has used them for the idle time (bounded in number).
_CACHE: IdleCache[RunEvaluation | None] = IdleCache(_idle_s, max_entries=16)
_MODELS: IdleCache[object] = IdleCache(_idle_s, max_entries=1)  # one model at a time: sessions share it


def load_evaluation(run_dir: Path | str) -> RunEvaluation | None:
    """The stored evaluation of a run (cached per file version), or None when there is none."""
    run = Run(run_dir)
    files = _files(run.path)
    if not files["summary"].is_file() or not files["predictions"].is_file():
        return None
    return _CACHE.get(str(files["summary"].resolve()), files["summary"].stat().st_mtime,
                      lambda: _read_evaluation(run, files))


def _read_evaluation(run: Run, files: dict) -> RunEvaluation | None:
    summary = read_json(files["summary"])
    if not summary or summary.get("format") != EVALUATION_FORMAT:
        return None
    try:
        predictions = pd.read_parquet(files["predictions"])
    except Exception:  # half-copied or damaged: evaluate again
        return None
    return RunEvaluation(run, summary, predictions)


def run_temperature(run_dir: Path | str) -> dict | None:
    """The calibration the run's evaluation fitted (``temperature`` and how), or None when the run has
    no evaluation of its current weights."""
    run = Run(run_dir)
    summary = read_json(_files(run.path)["summary"])
    if not summary or "calibration" not in summary:
        return None
    return None if _is_stale(run, summary) else summary["calibration"]


def run_ood_reference(run_dir: Path | str) -> OODReference | None:
    return load_reference(_files(run_dir)["ood"])


def _model_for(run: Run):
    from engine.training.runner import load_checkpoint_model

    return _MODELS.get(str(run.best_checkpoint.resolve()), run.best_checkpoint.stat().st_mtime,
                       lambda: load_checkpoint_model(run.best_checkpoint))


def activation_maps(run_dir: Path | str, image, class_names: list[str]) -> dict:
    """Grad-CAM of one image for each of ``class_names``, as overlays on the image the model saw.

    ``image`` is a path, file object or PIL image. Returns ``{"image": HxWx3 uint8,
    "maps": {class: HxWx3 uint8 overlay}, "heat": {class: HxW float}, "probabilities": {class: p}}``.
    One image takes well under a second on a CPU at the sizes the app trains at.
    """
    from engine.data.images import load_rgb, resize_center_crop
    from engine.evaluation.cam import grad_cam, overlay
    from engine.training.augment import normalize

    run = Run(run_dir)
    if not run.best_checkpoint.is_file():
        raise UserError(f"run '{run.id}' has no trained weights yet")
    config = run.config()
    model, _cfg, classes = _model_for(run)
    unknown = [c for c in class_names if c not in classes]
    if unknown:
        raise UserError(f"class '{unknown[0]}' is not one of this run's classes")
    size = config["resolved"]["image_size"]
    img = image if hasattr(image, "mode") and hasattr(image, "size") else load_rgb(image)
    pixels = resize_center_crop(img.convert("RGB"), size)
    x = normalize(torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None], config["resolved"]["mean"],
                  config["resolved"]["std"])
    targets = list(dict.fromkeys(classes.index(c) for c in class_names))
    heat = grad_cam(model, x, targets)
    with torch.no_grad():
        logits = model(x).numpy()
    calibration = run_temperature(run.path) or {}
    p = softmax(logits, calibration.get("temperature", 1.0))[0]
    return {"image": pixels,
            "maps": {classes[t]: overlay(pixels, h) for t, h in zip(targets, heat)},
            "heat": {classes[t]: h for t, h in zip(targets, heat)},
            "probabilities": {classes[t]: float(p[t]) for t in targets}}


def compare_runs(run_a: Path | str, run_b: Path | str) -> dict:
    """Images that flipped between two evaluated runs, and McNemar's test of the difference."""
    a, b = load_evaluation(run_a), load_evaluation(run_b)
    for run, ev in ((run_a, a), (run_b, b)):
        if ev is None:
            raise UserError(f"run '{Path(run).name}' has not been evaluated yet; evaluate it first")
    if a.classes != b.classes:
        raise UserError("the two runs have different classes; only runs on the same dataset can be compared")
    try:
        result = compare_predictions(a.predictions, b.predictions)
    except ValueError as exc:
        raise UserError(f"{exc}: compare runs trained on the same dataset with the same validation split") from None
    return result | {"run_a": a.run.id, "run_b": b.run.id}
