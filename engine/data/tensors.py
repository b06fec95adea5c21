"""Decode once, train many times: a dataset split as one uint8 tensor.

Images are decoded, EXIF-rotated, resized and centre-cropped to the training
size a single time and kept as ``(N, 3, S, S)`` uint8 (on disk in the cache
folder, loaded with ``weights_only=True``). Batches are then sliced from it and
augmented on the training device, so the data path never starves the model.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import torch

from engine.data.dataset import Dataset
from engine.data.images import ImageProblem, load_rgb, resize_center_crop
from engine.workspace import cache_dir

__all__ = ["SplitTensors", "decode_split"]


@dataclass
class SplitTensors:
    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) int64, index into classes
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _decode_one(path) -> np.ndarray | None:
    try:
        return load_rgb(path)
    except ImageProblem:
        return None


def decode_split(
    dataset: Dataset,
    split: str,
    size: int,
    classes: list[str],
    progress: Callable[[int, int], None] | None = None,
) -> SplitTensors:
    """The usable images of ``split`` at ``size`` px, from the cache when present."""
    rows = dataset.usable[dataset.usable["split"] == split]
    cache_file = cache_dir() / f"{dataset.fingerprint()}-{split}-{size}.pt"
    if cache_file.is_file():
        try:
            blob = torch.load(cache_file, map_location="cpu", weights_only=True)
            return SplitTensors(blob["images"], blob["labels"], list(blob["paths"]))
        except Exception:
            cache_file.unlink(missing_ok=True)  # damaged cache: rebuild it
    class_index = {name: i for i, name in enumerate(classes)}
    images = torch.empty((len(rows), 3, size, size), dtype=torch.uint8)
    keep, labels, paths = [], [], []
    files = [dataset.root / p for p in rows["path"]]

    def work(path):
        img = _decode_one(path)
        return None if img is None else resize_center_crop(img, size)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for i, (arr, (_, row)) in enumerate(zip(pool.map(work, files), rows.iterrows())):
            if arr is not None:  # a file broken after the scan is skipped, not fatal
                images[len(keep)] = torch.from_numpy(arr.copy()).permute(2, 0, 1)
                keep.append(i)
                labels.append(class_index[row["label"]])
                paths.append(row["path"])
            if progress and (i % 64 == 0 or i == len(files) - 1):
                progress(i + 1, len(files))
    images = images[: len(keep)].clone()
    result = SplitTensors(images, torch.tensor(labels, dtype=torch.int64), paths)
    tmp = cache_file.with_suffix(".partial")
    torch.save({"images": result.images, "labels": result.labels, "paths": result.paths}, tmp)
    tmp.replace(cache_file)
    return result
