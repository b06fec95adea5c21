"""A dataset is a folder of images plus one manifest table that every part reads.

``load_dataset(spec)`` accepts a built-in name, a folder of class subfolders
(optionally under ``train/``, ``val/``, ``test/``) or a .zip of the same. The manifest
is read by :mod:`engine.data.scan`, the split given by :mod:`engine.data.splits`;
decoded images are :func:`engine.data.tensors.load_split`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from engine.data.builtin import BUILTIN_DATASETS, materialise
from engine.data.corrections import apply_corrections
from engine.data.ingest import ingest_zip
from engine.data.scan import Progress, check_label, find_table, scan
from engine.data.splits import assign_split
from engine.data.tables import TABLE_SUFFIXES
from engine.errors import UserError

__all__ = ["Dataset", "load_dataset"]


@dataclass
class Dataset:
    name: str
    root: Path
    manifest: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    # "folders" (train/ val/ given), "table" (split column) or "generated" (stratified, seeded).
    split_source: str = "generated"
    val_fraction: float = 0.2
    seed: int = 0

    @property
    def usable(self) -> pd.DataFrame:
        return self.manifest[self.manifest["status"] == "ok"]

    @property
    def has_test(self) -> bool:
        """Whether a held-out ``test`` split exists (reported on, never used for choices)."""
        return bool((self.usable["split"] == "test").any())

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


def load_dataset(spec: str | Path, val_fraction: float = 0.2, seed: int = 0,
                 progress: Progress | None = None) -> Dataset:
    """Resolve ``spec`` to a dataset with a manifest and a train/val split.

    ``spec`` is a built-in name, a folder (class folders, or a ``labels.csv``
    at its top), a .zip of class folders, or a CSV/parquet file of
    path,label[,split] whose paths are relative to the file's folder.
    ``progress(done, total)`` is called while new files are hashed.
    """
    text = str(spec)
    table = None
    if text in BUILTIN_DATASETS:
        name, root = text, materialise(text)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise UserError(
                f"'{text}' is neither a folder, a .zip, a .csv nor a built-in dataset "
                f"({', '.join(BUILTIN_DATASETS)})"
            )
        if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
            name, root, table = path.parent.name, path.parent, path
        elif path.is_file():
            name, root = path.stem, ingest_zip(path)
        else:
            name, root = path.name, path
    manifest, problems, root = scan(root, table, progress)
    if manifest.empty:
        raise UserError(
            f"no class folders with images found in '{text}'; expected class_name/image.jpg "
            "(optionally under train/ and val/), or a labels.csv of path,label"
        )
    given = set(manifest.loc[manifest["status"] == "ok", "split"]) - {""}
    split_source = ("table" if table is not None or find_table(root) else "folders") \
        if "train" in given and given & {"val", "test"} else "generated"
    manifest = assign_split(manifest, val_fraction=val_fraction, seed=seed)
    manifest = apply_corrections(root, manifest)  # the workspace's relabels and drops: a new version
    dataset = Dataset(name=name, root=Path(root), manifest=manifest, problems=problems,
                      split_source=split_source, val_fraction=val_fraction, seed=seed)
    usable = dataset.usable
    for label in sorted(set(manifest["label"]) - set(usable["label"])):
        if label and not check_label(label):
            problems.append(f"class '{label}' has no readable images and was left out")
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
