"""A dataset is a folder of images plus one manifest table that every part reads.

``load_dataset(spec)`` accepts a built-in name, a folder of class subfolders
(optionally under ``train/``, ``val/``, ``test/``) or a .zip of the same.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engine.data.builtin import BUILTIN_DATASETS, materialise
from engine.data.images import IMAGE_SUFFIXES, ImageProblem, probe_image
from engine.data.zipsafe import safe_extract
from engine.errors import UserError
from engine.workspace import datasets_dir

__all__ = ["Dataset", "load_dataset", "scan_folder", "assign_split", "MANIFEST_COLUMNS"]

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
MANIFEST_COLUMNS = ["path", "label", "split", "width", "height", "mode", "bytes", "status"]
MAX_LABEL_LENGTH = 100


@dataclass
class Dataset:
    name: str
    root: Path
    manifest: pd.DataFrame
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> pd.DataFrame:
        return self.manifest[self.manifest["status"] == "ok"]

    @property
    def classes(self) -> list[str]:
        return sorted(self.usable["label"].unique().tolist())

    def fingerprint(self) -> str:
        """Hash of what training reads, so caches and runs can name their data."""
        cols = self.usable[["path", "label", "split", "bytes"]].astype(str)
        digest = hashlib.sha256(pd.util.hash_pandas_object(cols, index=False).values.tobytes())
        return digest.hexdigest()[:16]

    def summary(self) -> dict:
        usable = self.usable
        counts = usable.groupby(["split", "label"]).size().unstack(fill_value=0)
        return {
            "name": self.name,
            "root": str(self.root),
            "classes": self.classes,
            "num_images": int(len(usable)),
            "num_skipped": int(len(self.manifest) - len(usable)),
            "counts": {split: {k: int(v) for k, v in row.items()} for split, row in counts.iterrows()},
            "image_sizes": {
                "min": [int(usable["width"].min()), int(usable["height"].min())] if len(usable) else None,
                "max": [int(usable["width"].max()), int(usable["height"].max())] if len(usable) else None,
            },
            "modes": {str(k): int(v) for k, v in usable["mode"].value_counts().items()},
            "skipped": self.manifest.loc[self.manifest["status"] != "ok", ["path", "status"]].to_dict("records"),
            "problems": self.problems,
        }


def _check_label(label: str) -> str | None:
    if not label.strip():
        return "empty class name"
    if len(label) > MAX_LABEL_LENGTH:
        return f"class name longer than {MAX_LABEL_LENGTH} characters"
    return None


def _scan_classes(folder: Path, root: Path, split: str, rows: list[dict], problems: list[str]) -> None:
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = class_dir.name
        bad_label = _check_label(label)
        for path in sorted(class_dir.rglob("*")):
            if path.is_symlink() or not path.is_file() or path.name.startswith("."):
                continue
            row = {"path": path.relative_to(root).as_posix(), "label": label, "split": split,
                   "width": 0, "height": 0, "mode": "", "bytes": path.stat().st_size, "status": "ok"}
            if bad_label:
                row["status"] = bad_label
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                row["status"] = f"not an image file ({path.suffix or 'no extension'})"
            else:
                try:
                    row["width"], row["height"], row["mode"] = probe_image(path)
                except ImageProblem as exc:
                    row["status"] = str(exc)
            rows.append(row)
    loose = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        problems.append(f"{len(loose)} image(s) directly in {folder.name or 'the top folder'} are not in a class folder and were ignored")


def scan_folder(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """Manifest rows for every file under ``root``, reading image headers only."""
    root = Path(root)
    # A zip of one wrapping folder: look inside it.
    entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name.lower() not in SPLIT_ALIASES:
        inner = [p for p in entries[0].iterdir() if p.is_dir()]
        if inner and all(any(c.is_dir() for c in d.iterdir()) or d.name.lower() in SPLIT_ALIASES for d in inner):
            root = entries[0]
    rows: list[dict] = []
    problems: list[str] = []
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    split_dirs = {p: SPLIT_ALIASES[p.name.lower()] for p in subdirs if p.name.lower() in SPLIT_ALIASES}
    if split_dirs and "train" in split_dirs.values():
        for folder, split in split_dirs.items():
            _scan_classes(folder, root, split, rows, problems)
    else:
        _scan_classes(root, root, "", rows, problems)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    return manifest, problems


def assign_split(manifest: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Give every usable row a split: the folder's own, or a stratified one.

    ``test/`` stands in for ``val/`` when there is no ``val/``. Without any
    split folders each class sends ``val_fraction`` of its images (at least
    one, when it has two or more) to validation, chosen with a fixed seed.
    """
    manifest = manifest.copy()
    splits = set(manifest["split"]) - {""}
    if "train" in splits and ("val" in splits or "test" in splits):
        if "val" not in splits:
            manifest.loc[manifest["split"] == "test", "split"] = "val"
        return manifest
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    manifest["split"] = "train"
    ok = manifest["status"] == "ok"
    for _label, index in manifest[ok].groupby("label").groups.items():
        index = np.array(sorted(index))
        if len(index) < 2:
            continue
        n_val = max(1, int(round(len(index) * val_fraction)))
        n_val = min(n_val, len(index) - 1)
        manifest.loc[rng.choice(index, size=n_val, replace=False), "split"] = "val"
    return manifest


def _dataset_from_zip(path: Path) -> tuple[str, Path]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    safe_stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:40] or "upload"
    dest = datasets_dir() / f"{safe_stem}-{digest.hexdigest()[:10]}"
    if not dest.is_dir():
        safe_extract(path, dest)
    return path.stem, dest


def load_dataset(spec: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Resolve ``spec`` to a dataset with a manifest and a train/val split."""
    text = str(spec)
    if text in BUILTIN_DATASETS:
        name, root = text, materialise(text)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise UserError(
                f"'{text}' is neither a folder, a .zip nor a built-in dataset "
                f"({', '.join(BUILTIN_DATASETS)})"
            )
        if path.is_file():
            name, root = _dataset_from_zip(path)
        else:
            name, root = path.name, path
    manifest, problems = scan_folder(root)
    if manifest.empty:
        raise UserError(
            f"no class folders with images found in '{text}'; expected class_name/image.jpg "
            "(optionally under train/ and val/)"
        )
    manifest = assign_split(manifest, val_fraction=val_fraction, seed=seed)
    dataset = Dataset(name=name, root=Path(root), manifest=manifest, problems=problems)
    usable = dataset.usable
    if usable.empty:
        first = manifest["status"].iloc[0]
        raise UserError(f"none of the {len(manifest)} files in '{text}' is a readable image (e.g. {first})")
    if len(dataset.classes) < 2:
        raise UserError(
            f"'{text}' has only one class ({dataset.classes[0]}); a classifier needs at least two class folders"
        )
    train_classes = set(usable.loc[usable["split"] == "train", "label"])
    missing = [c for c in dataset.classes if c not in train_classes]
    if missing:
        raise UserError(f"class(es) {', '.join(missing)} have no training images; add images or remove the folder")
    if (usable["split"] == "val").sum() == 0:
        raise UserError("no validation images; give each class at least two images")
    return dataset
