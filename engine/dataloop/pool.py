"""An unlabelled pool beside a dataset, and the loop that labels it: suggest, confirm, refit.

The pool is ``unlabelled/`` inside the dataset folder, or any folder of images given beside it
(an uploaded zip is extracted into one). Its images are never moved or rewritten: the labels the
analyst confirms are a small table in the workspace (``cache/pool-labels/``), keyed by the
dataset's fingerprint and the pool's file list, with one entry per confirmed batch so the last
batch can be undone. (The dataset's corrections overlay, :mod:`engine.dataloop.overlay`, relabels
images the dataset already has; pool images are new ones, so they live here.)

The "current model" is the product's linear probe (:func:`engine.training.probe.fit_probe`) on the
cached frozen features of the training split plus the confirmed pool images: it refits in seconds
and is scored on the validation split after every confirmed batch, which draws the loop's curve.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.data.dataset import Dataset
from engine.data.images import IMAGE_SUFFIXES, ImageProblem, load_rgb, resize_center_crop
from engine.dataloop.active import DEFAULT_STRATEGY, select_batch
from engine.evaluation.calibration import softmax
from engine.errors import UserError
from engine.features import FeatureSet, feature_extractor, split_features
from engine.features.extract import backbone_key
from engine.training.probe import ProbeFit, fit_probe
from engine.workspace import atomic_path, cache_dir, read_json, write_json_atomic

__all__ = ["UNLABELLED_DIR", "LabelLoop", "pool_files", "resolve_pool", "save_uploaded_pool", "POOL_IMAGE_SIZE",
           "MAX_POOL_IMAGES"]

UNLABELLED_DIR = "unlabelled"
# The loop refits after every batch: small images keep the features cheap (a run can use its own size).
POOL_IMAGE_SIZE = 96
MAX_POOL_IMAGES = 20_000


def pool_files(folder: Path) -> list[str]:
    """Image files under ``folder`` (relative posix paths, sorted; hidden files and links skipped)."""
    folder = Path(folder)
    found = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
             if p.is_file() and not p.is_symlink() and p.suffix.lower() in IMAGE_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found)


def resolve_pool(dataset: Dataset, pool: str | Path | None = None) -> Path:
    """The pool folder: ``pool`` when given, else the dataset's own ``unlabelled/``."""
    folder = Path(pool).expanduser() if pool else dataset.root / UNLABELLED_DIR
    if not folder.is_dir():
        where = f"'{folder}'" if pool else f"no '{UNLABELLED_DIR}/' folder in dataset '{dataset.name}'"
        raise UserError(f"unlabelled pool: {where} is not a folder; give --pool FOLDER (a folder of images) or "
                        f"put the images in {UNLABELLED_DIR}/ inside the dataset")
    return folder


def save_uploaded_pool(name: str, data: bytes) -> Path:
    """An uploaded zip of unlabelled images, extracted (checked: :func:`engine.data.zipsafe.safe_extract`) into
    the workspace once per content; the folder is the pool."""
    from engine.data.zipsafe import safe_extract

    digest = hashlib.sha256(data).hexdigest()[:16]
    dest = cache_dir() / "pools" / digest
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    upload = dest.parent / f"{digest}.zip"
    with atomic_path(upload) as tmp:
        Path(tmp).write_bytes(data)
    try:
        return safe_extract(upload, dest)
    finally:
        upload.unlink(missing_ok=True)



@dataclass
class LabelLoop:
    """One dataset, one pool, one backbone and size: suggestions, confirmed labels and the curve."""

    dataset: Dataset
    pool_dir: Path
    backbone: str = "mobilenet_v2"
    image_size: int = POOL_IMAGE_SIZE
    files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pool_dir = Path(self.pool_dir)
        self.files = self.files or pool_files(self.pool_dir)
        if not self.files:
            raise UserError(f"unlabelled pool '{self.pool_dir}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if len(self.files) > MAX_POOL_IMAGES:
            raise UserError(f"unlabelled pool has {len(self.files)} images; at most {MAX_POOL_IMAGES} at once")
        self.classes = self.dataset.classes
        self._train: FeatureSet | None = None
        self._val: FeatureSet | None = None
        self._pool: np.ndarray | None = None
        self._readable: list[str] = []

    # ------------------------------------------------------------ identity and the labels table
    def key(self) -> str:
        stats = [(f, (self.pool_dir / f).stat().st_size) for f in self.files]
        blob = json.dumps([self.dataset.fingerprint(), str(self.pool_dir.resolve()), stats])
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def _table_path(self) -> Path:
        return cache_dir() / "pool-labels" / f"{self.key()}.json"

    def table(self) -> dict:
        return read_json(self._table_path(), default=None) or {"batches": [], "curve": []}

    def confirmed(self) -> dict[str, str]:
        """Pool path -> confirmed class, later batches winning."""
        out: dict[str, str] = {}
        for batch in self.table()["batches"]:
            out.update(batch["labels"])
        return out

    # ------------------------------------------------------------ features
    def _pool_cache(self) -> Path:
        return cache_dir() / "features" / f"pool-{self.key()}-{backbone_key(self.backbone, self.image_size)}.npz"

    def features_ready(self) -> bool:
        """Whether the pool's features are cached (computed after the dataset's, by the same command)."""
        return self._pool is not None or self._pool_cache().is_file()

    def prepare_command(self) -> list[str]:
        """The ``python -m engine`` arguments that compute and cache every feature the loop needs (a
        background task for the Label page; ``suggest`` with one image)."""
        return ["suggest", str(self.dataset.root), "--pool", str(self.pool_dir.resolve()), "--k", "1",
                "--backbone", self.backbone, "--image-size", str(self.image_size), "--json"]

    def _features(self) -> tuple[FeatureSet, FeatureSet, np.ndarray, list[str]]:
        if self._train is None or self._val is None or self._pool is None:
            self._train = split_features(self.dataset, "train", self.backbone, self.image_size, self.classes)
            self._val = split_features(self.dataset, "val", self.backbone, self.image_size, self.classes)
            self._pool, self._readable = self._pool_features()
        return self._train, self._val, self._pool, self._readable

    def _pool_features(self) -> tuple[np.ndarray, list[str]]:
        import torch

        path = self._pool_cache()
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as blob:
                    return blob["features"], [str(p) for p in blob["paths"]]
            except Exception:
                path.unlink(missing_ok=True)
        arrays, readable = [], []
        for f in self.files:
            try:
                arrays.append(resize_center_crop(load_rgb(self.pool_dir / f), self.image_size))
                readable.append(f)
            except ImageProblem:
                continue  # an unreadable pool file is never suggested
        if not arrays:
            raise UserError(f"none of the {len(self.files)} files in the unlabelled pool is a readable image")
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        feats = feature_extractor(self.backbone, self.image_size, images=len(images))(images)
        feats = feats.reshape(len(images), -1)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, features=feats, paths=np.array(readable, dtype=str))
        return feats, readable

    # ------------------------------------------------------------ the model and the loop
    def fit(self) -> tuple[ProbeFit, dict]:
        """The probe on the training split plus the confirmed pool images, and its validation accuracy."""
        train, val, pool, readable = self._features()
        confirmed = self.confirmed()
        index = {c: i for i, c in enumerate(self.classes)}
        rows = [i for i, f in enumerate(readable) if f in confirmed]
        x = np.concatenate([train.features, pool[rows]]) if rows else train.features
        y = np.concatenate([train.labels, [index[confirmed[readable[i]]] for i in rows]]).astype(np.int64) \
            if rows else train.labels
        probe = fit_probe(x, y, len(self.classes))
        acc = float((probe.logits(val.features).argmax(1) == val.labels).mean()) if len(val) else float("nan")
        return probe, {"labels": int(len(y)), "pool_labels": len(rows), "accuracy": acc,
                       "val_images": int(len(val))}

    def suggest(self, k: int, strategy: str = DEFAULT_STRATEGY, seed: int = 0) -> list[dict]:
        """The next ``k`` unconfirmed pool images to label, each with the current model's label and confidence."""
        if k < 1:
            raise UserError("--k must be at least 1")
        train, _, pool, readable = self._features()
        probe, _ = self.fit()
        confirmed = self.confirmed()
        open_rows = np.array([i for i, f in enumerate(readable) if f not in confirmed], dtype=np.int64)
        if not len(open_rows):
            return []
        done_rows = np.array([i for i, f in enumerate(readable) if f in confirmed], dtype=np.int64)
        # Diversity is measured against everything labelled: the training split and the confirmed pool images.
        feats = np.concatenate([pool, train.features])
        labelled = np.concatenate([done_rows, len(pool) + np.arange(len(train))]).astype(np.int64)
        probs_open = softmax(probe.logits(pool[open_rows]))
        picked = select_batch(strategy, feats, labelled, open_rows, probs_open, k, seed=seed)
        position = {int(r): j for j, r in enumerate(open_rows)}
        out = []
        for r in picked:
            p = probs_open[position[int(r)]]
            best = int(p.argmax())
            out.append({"path": readable[int(r)], "suggested": self.classes[best], "confidence": float(p[best])})
        return out

    def confirm(self, labels: dict[str, str]) -> dict:
        """Store one batch of confirmed labels (pool path -> class), refit, and add the curve's point."""
        unknown = [v for v in labels.values() if v not in self.classes]
        if unknown:
            raise UserError(f"unknown class '{unknown[0]}'; the classes are {', '.join(self.classes)}")
        missing = [p for p in labels if p not in self.files]
        if missing:
            raise UserError(f"'{missing[0]}' is not an image of the unlabelled pool")
        if not labels:
            raise UserError("no labels to confirm")
        table = self.table()
        if not table["curve"]:  # the starting point: the model before any pool label
            _, start = self.fit()
            table["curve"].append(start)
        table["batches"].append({"labels": dict(labels), "at": time.time()})
        write_json_atomic(self._table_path(), table)
        _, point = self.fit()
        table["curve"].append(point)
        write_json_atomic(self._table_path(), table)
        return point

    def undo(self) -> dict | None:
        """Remove the last confirmed batch and its curve point; the removed batch, or None when there was none."""
        table = self.table()
        if not table["batches"]:
            return None
        batch = table["batches"].pop()
        if len(table["curve"]) > 1:
            table["curve"].pop()
        write_json_atomic(self._table_path(), table)
        return batch

    def curve(self) -> list[dict]:
        return self.table()["curve"]
