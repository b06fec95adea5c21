"""Evaluate a finished run once: score its best weights on the validation split and store the result.

The per-image table, the headline metrics with bootstrap intervals, calibration, the threshold curve,
the OOD reference and the galleries, written through :mod:`engine.evaluation.store` (which says where);
explaining single images is :mod:`engine.evaluation.explain`'s, on demand.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine.errors import UserError
from engine.evaluation.calibration import fit_temperature, reliability, softmax
from engine.evaluation.curves import overfitting, threshold_curve
from engine.evaluation.metrics import BOOTSTRAP_RESAMPLES, confusion, headline_metrics, per_class_table
from engine.evaluation.ood import build_reference, sample_rows
from engine.evaluation.store import EVALUATION_FORMAT, checkpoint_digest, evaluation_files
from engine.runs import Resolved, Run
from engine.workspace import atomic_path, write_json_atomic

__all__ = ["evaluate_run", "train_sample", "GALLERY_SIZE", "TRAIN_SAMPLE_IMAGES"]

GALLERY_SIZE = 24
# A fine-tuned backbone has no cached features: its training images go through the model again, only
# for the OOD reference and the train accuracy. A seeded sample of this many does both (the accuracy's
# standard error stays under 1.2 points) and bounds evaluate's time by the validation split, not the
# training set (60,000 Fashion-MNIST images would cost minutes on a CPU).
TRAIN_SAMPLE_IMAGES = 2_000


def _load_splits(config: dict, classes: list[str]):
    """The dataset root and its validation and training images, decoded as training saw them (cached)."""
    from engine.data.dataset import load_dataset
    from engine.data.tensors import decode_split

    dataset = load_dataset(config["dataset"], val_fraction=config.get("val_fraction", 0.2), seed=config.get("seed", 0))
    size = Resolved.of(config).image_size
    return dataset.root, decode_split(dataset, "val", size, classes), decode_split(dataset, "train", size, classes)


def _probe_splits(config: dict, classes: list[str]):
    """The dataset root and the validation and training features of a linear probe's frozen backbone
    (cached by training: no image is decoded; computed in chunks when absent)."""
    from engine.data.dataset import load_dataset
    from engine.features import split_features

    dataset = load_dataset(config["dataset"], val_fraction=config.get("val_fraction", 0.2), seed=config.get("seed", 0))
    size = Resolved.of(config).image_size
    return (dataset.root, *(split_features(dataset, split, config["backbone"], size, classes)
                            for split in ("val", "train")))


def train_sample(n: int, seed: int, limit: int = TRAIN_SAMPLE_IMAGES) -> np.ndarray:
    """Sorted indices of the training images a fine-tune's evaluation scores: all of them up to ``limit``,
    else a sample drawn with the run's seed (the same images on every evaluate of the run)."""
    return sample_rows(n, limit, seed)


class _FeaturesAndLogits(torch.nn.Module):
    """A trained classifier as one output, ``[pooled features | logits]``: one graph, one pass, two answers."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        return torch.cat([features, self.model.head(features)], dim=1)


def _features_and_logits(model, splits: list[tuple[str, torch.Tensor, np.ndarray]], mean, std, size: int,
                         scratch: Path, say=None, engine: str = "auto") -> list[tuple[np.ndarray, np.ndarray]]:
    """Pooled backbone features and logits of uint8 NCHW images (only the given rows of each split), in
    batches, through one scoring function (onnxruntime on CPU, torch on a GPU: ``module_extractor``)."""
    from engine.features import module_extractor

    total = sum(len(rows) for _name, _images, rows in splits)
    extractor = module_extractor(_FeaturesAndLogits(model).eval(), mean, std, size, scratch, images=total,
                                 engine=engine)
    out = []
    for what, images, rows in splits:
        # Sorted rows, read forwards: a memory-mapped split is streamed, one batch in memory at a time.
        batches = (images[torch.from_numpy(rows[start : start + extractor.batch_size])]
                   for start in range(0, len(rows), extractor.batch_size))

        def progress(done: int, n: int, what=what) -> None:
            if say and (done // extractor.batch_size) % 8 == 0:
                say(f"{what}: {done}/{n} images")

        both = extractor.over_batches(batches, len(rows), progress)
        if both.size == 0:
            both = np.zeros((0, model.feature_dim + len(model.head.bias)), np.float32)
        out.append((both[:, : model.feature_dim], both[:, model.feature_dim :]))
    return out


def _training_val_outputs(run: Run, n_val: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Validation features and logits of training's own pass over exactly these best weights, if it left them."""
    path = run.val_outputs_file
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["checkpoint_sha256"]) != checkpoint_digest(run) or len(saved["logits"]) != n_val:
                return None  # other weights (resumed, retrained) or another split: score again
            return np.asarray(saved["features"], np.float32), np.asarray(saved["logits"], np.float32)
    except (OSError, ValueError, KeyError):
        return None


def evaluate_run(run_dir: Path | str, progress: Callable[[str], None] | None = None,
                 n_resamples: int = BOOTSTRAP_RESAMPLES, engine: str = "auto") -> dict:
    """Score the run's best weights on its validation split; write and return ``evaluation.json``.

    ``engine`` scores a trained backbone's images: ``auto`` (onnxruntime on CPU, torch on a GPU),
    ``onnxruntime`` or ``torch``."""
    from engine.training.checkpoint import load_checkpoint_model

    say = progress or (lambda message: None)
    started = time.time()
    run = Run(run_dir)
    config = run.config()
    if not run.best_checkpoint.is_file():
        raise UserError(f"run '{run.id}' has no trained weights yet (state: {run.status().get('state')}); "
                        "train it first")
    resolved = run.resolved()
    mean, std = resolved.mean, resolved.std
    if config.get("mode") == "linear":
        # Only the head was trained and the frozen features are cached: the checkpoint's head alone gives the
        # logits (no backbone to build, so no torchvision import: seconds of a CPU-bound evaluate).
        say("reading the trained head and the frozen features training cached")
        blob = torch.load(run.best_checkpoint, map_location="cpu", weights_only=True)
        classes = list(blob["classes"])
        weight = blob["state_dict"]["head.weight"].float().numpy()
        bias = blob["state_dict"]["head.bias"].float().numpy()
        root, val, train = _probe_splits(config, classes)
        val_feats, train_feats = val.features, train.features
        val_logits, train_logits = (np.asarray(f, np.float32) @ weight.T + bias for f in (val_feats, train_feats))
        train_labels = np.asarray(train.labels)
    else:
        say("loading the best checkpoint")
        model, _cfg, classes = load_checkpoint_model(run.best_checkpoint)
        model = model.eval()  # module_extractor puts it where it runs
        say("decoding the validation and training images")
        root, val, train = _load_splits(config, classes)
        rows = train_sample(len(train), int(config.get("seed", 0)), TRAIN_SAMPLE_IMAGES)
        reused = _training_val_outputs(run, len(val))
        splits = [("training", train.images, rows)]
        if reused is None:
            splits.insert(0, ("validation", val.images, np.arange(len(val))))
        else:
            say("validation: reusing training's pass over the best weights")
        scored = _features_and_logits(model, splits, mean, std, resolved.image_size,
                                      evaluation_files(run.path)["summary"].parent / "scoring.onnx.part", say, engine)
        (val_feats, val_logits), (train_feats, train_logits) = (reused or scored[0]), scored[-1]
        train_labels = np.asarray(train.labels)[rows]
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
    train_acc = float((train_logits.argmax(1) == train_labels).mean()) if len(train_labels) else None
    summary = {
        "format": EVALUATION_FORMAT,
        "run": run.id,
        "classes": classes,
        "images": int(len(y)),
        "train_images": int(len(train)),
        "train_images_scored": int(len(train_labels)),  # the train accuracy's (the OOD reference: "ood")
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
        "checkpoint_sha256": checkpoint_digest(run),
        "evaluated_at": time.time(),
    }
    files = evaluation_files(run.path)
    files["summary"].parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(files["predictions"]) as tmp:
        table.to_parquet(tmp, index=False)
    ood.save(files["ood"])
    summary["seconds"] = round(time.time() - started, 2)
    write_json_atomic(files["summary"], summary)
    say(f"evaluation written in {summary['seconds']:.1f} s")
    return summary

