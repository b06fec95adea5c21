"""Prediction an analyst can act on: a batch of untrusted files (images or zips of images) through a run's
exported ONNX model, with per-file errors, an "unsure" threshold and an out-of-distribution flag.

Everything runs on onnxruntime: the exported graph outputs the pooled backbone features
next to the logits, and the run's evaluation stored the training features they are compared
with (:mod:`engine.evaluation.ood`).
"""
from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from engine.data.images import IMAGE_SUFFIXES, ImageProblem, load_rgb
from engine.data.zipsafe import ZipLimits, max_upload_bytes
from engine.errors import UserError
from engine.export.inference import get_classifier, softmax

__all__ = ["expand_uploads", "analyse_images", "UNSURE", "MAX_BATCH_IMAGES"]

UNSURE = "unsure"
# One page request; more belongs in a script with the bundle's predict.py.
MAX_BATCH_IMAGES = 500


def _zip_members(name: str, data: bytes) -> list[tuple[str, bytes | None, str | None]]:
    """The image files of an uploaded zip, each as (name, bytes, None), or one (name, None, error) line."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return [(name, None, "not a readable zip archive")]
    out: list[tuple[str, bytes | None, str | None]] = []
    total = 0
    with archive:
        for info in archive.infolist():
            path = PurePosixPath(info.filename.replace("\\", "/"))
            if info.is_dir() or any(p in {"__MACOSX", ".DS_Store"} or p.startswith("._") for p in path.parts):
                continue
            member = f"{name}/{path}"
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                out.append((member, None, f"not an image file ({path.suffix or 'no extension'})"))
                continue
            if len(out) >= MAX_BATCH_IMAGES:
                out.append((name, None, f"more than {MAX_BATCH_IMAGES} files; the rest were not read"))
                break
            ratio = info.file_size / max(1, info.compress_size)
            total += info.file_size
            if info.file_size > ZipLimits.max_entry_bytes or ratio > ZipLimits.max_ratio:
                out.append((member, None, "refused: too large or too highly compressed"))
                continue
            if total > max_upload_bytes():
                out.append((name, None, "the zip unpacks to more than the upload limit; the rest were not read"))
                break
            out.append((member, archive.read(info), None))
    return out or [(name, None, "the zip holds no files")]


def expand_uploads(files: list[tuple[str, bytes]]) -> list[tuple[str, bytes | None, str | None]]:
    """Uploaded (name, bytes) -> one (name, bytes, error) per image; a zip becomes its images."""
    out: list[tuple[str, bytes | None, str | None]] = []
    for name, data in files:
        if name.lower().endswith(".zip"):
            out.extend(_zip_members(name, data))
        else:
            out.append((name, data, None))
    return out


_OOD_CACHE: dict[str, tuple[float, object]] = {}


def _ood_reference(run_dir: Path):
    from engine.evaluation import evaluation_dir, run_ood_reference

    path = evaluation_dir(run_dir) / "ood_reference.npz"
    if not path.is_file():
        return None
    key, mtime = str(path.resolve()), path.stat().st_mtime
    hit = _OOD_CACHE.get(key)
    if hit is None or hit[0] != mtime:
        hit = (mtime, run_ood_reference(run_dir))
        _OOD_CACHE[key] = hit
    return hit[1]


def analyse_images(run_dir: Path | str, files: list[tuple[str, bytes]], top_k: int = 3, threshold: float = 0.0,
                   model_file: Path | str | None = None) -> dict:
    """Classify uploaded files with the run's exported model.

    ``files``: (name, bytes) pairs, images or zips of images; each bad file becomes one
    ``errors`` entry and the others still run. ``threshold``: below this calibrated top
    probability the answer is ``"unsure"``. Returns ``rows`` (one per image: file, answer,
    top-k, probabilities, milliseconds, OOD score and flag), ``errors``, the ``images`` that
    were read (name -> PIL image, for a gallery) and ``ood`` (the calibration used, or why none).
    """
    from engine.runs import Run

    run = Run(run_dir)
    classifier = get_classifier(model_file or run.onnx_file)
    classes = classifier.classes
    top_k = max(1, min(int(top_k), len(classes)))
    items = expand_uploads(files)
    if len(items) > MAX_BATCH_IMAGES:
        raise UserError(f"{len(items)} images in one request; at most {MAX_BATCH_IMAGES} (use the bundle's "
                        "predict.py for more)")
    errors, names, images, prepared, prep_ms = [], [], {}, [], []
    for name, data, problem in items:
        if problem:
            errors.append({"file": name, "error": problem})
            continue
        t0 = time.perf_counter()
        try:
            img = load_rgb(io.BytesIO(data))
            prepared.append(classifier.prepare(img))
        except ImageProblem as exc:
            errors.append({"file": name, "error": str(exc)})
            continue
        except Exception as exc:  # a file that decodes but cannot be prepared: report it, go on
            errors.append({"file": name, "error": f"cannot be prepared for the model ({type(exc).__name__})"})
            continue
        prep_ms.append(1000 * (time.perf_counter() - t0))
        names.append(name)
        images[name] = img
    ood = _ood_reference(run.path)
    result = {"rows": [], "errors": errors, "images": images, "classes": classes,
              "temperature": classifier.temperature, "threshold": float(threshold)}
    if ood is None:
        result["ood"] = {"available": False, "reason": "the run has not been evaluated yet: evaluate it to get "
                         "out-of-distribution scores"}
    elif not classifier.has_features:
        result["ood"] = {"available": False, "reason": "this export has no features output: export the run again "
                         "to get out-of-distribution scores"}
    else:
        result["ood"] = {"available": True, **ood.summary()}
    if not prepared:
        return result
    t0 = time.perf_counter()
    logits, features = classifier.logits_and_features(np.stack(prepared))
    model_ms = 1000 * (time.perf_counter() - t0) / len(prepared)
    probs = softmax(logits, classifier.temperature)
    scores = ood.scores(features) if result["ood"]["available"] else None
    for i, name in enumerate(names):
        row = probs[i]
        order = np.argsort(-row)[:top_k]
        best = float(row[order[0]])
        record = {
            "file": name,
            "answer": classes[order[0]] if best >= threshold else UNSURE,
            "prediction": classes[order[0]],
            "probability": best,
            f"top-{top_k}": ", ".join(f"{classes[j]} {row[j]:.3f}" for j in order),
            "top_k": [{"class": classes[j], "probability": float(row[j])} for j in order],
            "ms": round(prep_ms[i] + model_ms, 2),
        }
        if scores is not None:
            record["ood_score"] = float(scores[i])
            record["ood_percentile"] = float(ood.percentile_of(scores[i:i + 1])[0])
            record["unlike_training"] = bool(ood.flags(scores[i:i + 1])[0])
        result["rows"].append(record)
    return result
