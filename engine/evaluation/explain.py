"""Explaining a run's predictions on demand: Grad-CAM of the images a user opens, and two runs compared.

Nothing here runs during the evaluation itself: a map is computed when a user asks for it (one image,
well under a second on CPU), with the run's model held in an idle cache that sessions share.
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.errors import UserError
from engine.evaluation.calibration import softmax
from engine.evaluation.compare import compare_predictions
from engine.evaluation.store import idle_seconds, load_evaluation, run_temperature
from engine.idle_cache import IdleCache
from engine.runs import Run

__all__ = ["activation_maps", "compare_runs"]

_MODELS: IdleCache[object] = IdleCache(idle_seconds, max_entries=1)  # one model at a time: sessions share it


def _model_for(run: Run):
    from engine.training.checkpoint import load_checkpoint_model

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
    model, _cfg, classes = _model_for(run)
    unknown = [c for c in class_names if c not in classes]
    if unknown:
        raise UserError(f"class '{unknown[0]}' is not one of this run's classes")
    resolved = run.resolved()
    size = resolved.image_size
    img = image if hasattr(image, "mode") and hasattr(image, "size") else load_rgb(image)
    pixels = resize_center_crop(img.convert("RGB"), size)
    x = normalize(torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None], resolved.mean, resolved.std)
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
    if a is None or b is None:
        missing = run_a if a is None else run_b
        raise UserError(f"run '{Path(missing).name}' has not been evaluated yet; evaluate it first")
    if a.classes != b.classes:
        raise UserError("the two runs have different classes; only runs on the same dataset can be compared")
    try:
        result = compare_predictions(a.predictions, b.predictions)
    except ValueError as exc:
        raise UserError(f"{exc}: compare runs trained on the same dataset with the same validation split") from None
    return result | {"run_a": a.run.id, "run_b": b.run.id}

