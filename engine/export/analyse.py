"""Prediction an analyst can act on: a batch of untrusted files (images or zips of images) through a run's
exported ONNX model, with per-file errors, an "unsure" threshold and an out-of-distribution flag.

Everything runs on onnxruntime: the exported graph outputs the pooled backbone features
next to the logits, and the run's evaluation stored the training features they are compared
with (:mod:`engine.evaluation.ood`).

One request is bounded in files, unpacked bytes and decoded pixels (:class:`RequestBudget`; the
anonymous model demo gets stricter limits than the Predict page). Zip members are read one at a time
through the bounded zip reader, each image is decoded no larger than the model needs (JPEG draft) and
only a gallery thumbnail of it is kept. A batch's results are cached by content hash, so moving the
threshold slider does not decode anything again.
"""
from __future__ import annotations

import hashlib
import io
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.images import IMAGE_SUFFIXES, ImageProblem, load_rgb
from engine.data.zipsafe import ZipLimits, open_zip, read_member, zip_members
from engine.errors import UserError
from engine.export.inference import get_classifier, softmax
from engine.idle_cache import IdleCache

__all__ = ["analyse_images", "RequestBudget", "UNSURE", "GALLERY_PX"]

UNSURE = "unsure"
# Longest side of the gallery thumbnail kept per image (the decoded image itself is dropped).
GALLERY_PX = 192


@dataclass(frozen=True)
class RequestBudget:
    """What one request may cost: images, unpacked bytes, decoded pixels; ``page`` names it in messages."""

    files: int
    bytes: int
    pixels: int
    page: str
    variables: tuple[str, str, str]

    @classmethod
    def for_page(cls, page: str) -> RequestBudget:
        """The budget of ``"predict"`` (the Predict page and the CLI) or ``"demo"`` (the anonymous share link)."""
        from engine.settings.limits import limits

        current = limits()
        if page == "demo":
            return cls(int(current.demo_max_files), int(current.demo_max_mb * 1024**2),
                       int(current.demo_max_megapixels * 1e6), "the model demo",
                       ("TS_DEMO_MAX_FILES", "TS_DEMO_MAX_MB", "TS_DEMO_MAX_MEGAPIXELS"))
        if page != "predict":
            raise ValueError(f"unknown request budget {page!r}")
        return cls(int(current.predict_max_files), int(current.predict_max_mb * 1024**2),
                   int(current.predict_max_megapixels * 1e6), "one Predict request",
                   ("TS_PREDICT_MAX_FILES", "TS_PREDICT_MAX_MB", "TS_PREDICT_MAX_MEGAPIXELS"))


class _Spent:
    """What a request has used so far against its budget; ``over`` is why the rest is not read."""

    def __init__(self, budget: RequestBudget | None):
        self.budget, self.files, self.bytes, self.pixels = budget, 0, 0, 0
        self.over: str | None = None

    def room_for_file(self, size: int) -> bool:
        b = self.budget
        if b is None or self.over:
            return self.over is None
        if self.files >= b.files:
            self.over = (f"more than {b.files:,} images for {b.page} ({b.variables[0]}); the rest were not read: "
                         "send fewer, or use the bundle's predict.py for a large batch")
        elif self.bytes + size > b.bytes:
            self.over = (f"the images unpack to more than {b.bytes / 1024**2:,.0f} MB for {b.page} "
                         f"({b.variables[1]}); the rest were not read: send fewer or smaller images")
        elif self.pixels >= b.pixels:
            self.over = (f"the images decode to more than {b.pixels / 1e6:,.0f} megapixels for {b.page} "
                         f"({b.variables[2]}); the rest were not read: send fewer or smaller images")
        return self.over is None


def _zip_images(name: str, data: bytes, spent: _Spent) -> Iterator[tuple[str, bytes | None, str | None]]:
    """The members of an uploaded zip, one at a time: (name, bytes, None) or (name, None, why not)."""
    any_member = False
    try:
        with open_zip(io.BytesIO(data), name) as archive:
            for info, path, problem in zip_members(archive):
                any_member = True
                member = f"{name}/{path}"
                if problem:
                    yield member, None, problem
                elif path.suffix.lower() not in IMAGE_SUFFIXES:
                    yield member, None, f"not an image file ({path.suffix or 'no extension'})"
                elif not spent.room_for_file(info.file_size):
                    return
                else:
                    limit = ZipLimits.max_entry_bytes
                    if spent.budget is not None:
                        limit = min(limit, spent.budget.bytes - spent.bytes)
                    try:
                        content = read_member(archive, info, limit)
                    except UserError as exc:
                        yield member, None, str(exc)
                        continue
                    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
                        yield member, None, f"cannot be read from the zip ({str(exc)[:80]})"
                        continue
                    yield member, content, None
    except UserError as exc:
        yield name, None, str(exc)
        return
    if not any_member:
        yield name, None, "the zip holds no files"


def _uploads(files: list[tuple[str, bytes]], spent: _Spent) -> Iterator[tuple[str, bytes | None, str | None]]:
    """Uploaded (name, bytes) -> one (name, bytes, error) per image, a zip's members streamed one by one."""
    for name, data in files:
        if name.lower().endswith(".zip"):
            yield from _zip_images(name, data, spent)
        elif spent.room_for_file(len(data)):
            yield name, data, None
        if spent.over:
            return


def _idle_s() -> float:
    from engine.settings.limits import limits

    return limits().model_idle_minutes * 60


# A run's OOD reference (the training features) and a batch's results, both released when idle.
_OOD_CACHE: IdleCache[object] = IdleCache(_idle_s, max_entries=8)
_RESULTS: IdleCache[dict] = IdleCache(_idle_s, max_entries=4)


def _ood_reference(run_dir: Path):
    from engine.evaluation import evaluation_dir, run_ood_reference

    path = evaluation_dir(run_dir) / "ood_reference.npz"
    if not path.is_file():
        return None
    return _OOD_CACHE.get(str(path.resolve()), path.stat().st_mtime, lambda: run_ood_reference(run_dir))


def _batch_key(model: Path, files: list[tuple[str, bytes]], top_k: int, budget: RequestBudget | None) -> str:
    digest = hashlib.blake2b(digest_size=20)
    digest.update(repr((str(model), model.stat().st_mtime, top_k, budget)).encode())
    for name, data in files:
        digest.update(name.encode("utf-8", "replace") + b"\0" + len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def analyse_images(run_dir: Path | str, files: list[tuple[str, bytes]], top_k: int = 3, threshold: float = 0.0,
                   model_file: Path | str | None = None, budget: str | None = "predict") -> dict:
    """Classify uploaded files with the run's exported model.

    ``files``: (name, bytes) pairs, images or zips of images; each bad file becomes one
    ``errors`` entry and the others still run. ``threshold``: below this calibrated top
    probability the answer is ``"unsure"``. ``budget``: ``"predict"``, ``"demo"`` (stricter) or None
    (the operator's CLI: no per-request limit); what is past the budget is not read, and one error
    says so. Returns ``rows`` (one per image: file, answer, top-k, probabilities, milliseconds, OOD
    score and flag), ``errors`` (``request`` True on the one saying the budget ran out), ``images``
    (name -> gallery thumbnail, PIL, at most ``GALLERY_PX``) and ``ood`` (the calibration used, or why none).
    """
    from engine.runs import Run

    run = Run(run_dir)
    model = Path(model_file or run.onnx_file).resolve()
    classifier = get_classifier(model)
    top_k = max(1, min(int(top_k), len(classifier.classes)))
    request = RequestBudget.for_page(budget) if budget else None
    key = _batch_key(model, files, top_k, request)
    result = _RESULTS.get(key, None, lambda: _classify(run.path, classifier, files, top_k, request))
    rows = [{"file": r["file"], "answer": r["prediction"] if r["probability"] >= threshold else UNSURE, **r}
            for r in result["rows"]]
    return {**result, "rows": rows, "errors": list(result["errors"]), "threshold": float(threshold)}


def _classify(run_dir: Path, classifier, files: list[tuple[str, bytes]], top_k: int,
              request: RequestBudget | None) -> dict:
    """Decode, prepare and classify within the budget: rows without the threshold's answer (cached)."""
    classes = classifier.classes
    spent = _Spent(request)
    errors: list[dict[str, Any]] = []
    names, images, prepared, prep_ms = [], {}, [], []
    draft = 2 * int(classifier.preprocess["input_size"])  # a margin over the model's size: resize stays bilinear
    for name, data, problem in _uploads(files, spent):
        if problem or data is None:
            errors.append({"file": name, "error": problem or "could not be read"})
            continue
        spent.files += 1
        spent.bytes += len(data)
        t0 = time.perf_counter()
        try:
            img = load_rgb(io.BytesIO(data), draft_size=draft)
            spent.pixels += img.size[0] * img.size[1]
            prepared.append(classifier.prepare(img))
        except ImageProblem as exc:
            errors.append({"file": name, "error": str(exc)})
            continue
        except Exception as exc:  # a file that decodes but cannot be prepared: report it, go on
            errors.append({"file": name, "error": f"cannot be prepared for the model ({type(exc).__name__})"})
            continue
        prep_ms.append(1000 * (time.perf_counter() - t0))
        img.thumbnail((GALLERY_PX, GALLERY_PX))  # the full-size pixels are not kept
        names.append(name)
        images[name] = img
    if spent.over:
        errors.append({"file": "this request", "error": spent.over, "request": True})
    ood = _ood_reference(run_dir)
    result: dict[str, Any] = {"rows": [], "errors": errors, "images": images, "classes": classes,
              "temperature": classifier.temperature}
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
        record = {
            "prediction": classes[order[0]],
            "probability": float(row[order[0]]),
            f"top-{top_k}": ", ".join(f"{classes[j]} {row[j]:.3f}" for j in order),
            "top_k": [{"class": classes[j], "probability": float(row[j])} for j in order],
            "ms": round(prep_ms[i] + model_ms, 2),
        }
        if scores is not None:
            record["ood_score"] = float(scores[i])
            record["ood_percentile"] = float(ood.percentile_of(scores[i:i + 1])[0])
            record["unlike_training"] = bool(ood.flags(scores[i:i + 1])[0])
        result["rows"].append({"file": name, **record})
    if scores is not None:  # the whole batch against the training data (issue 20)
        from engine.evaluation.shift import batch_test_against

        result["batch_test"] = batch_test_against(ood, features)
    return result
