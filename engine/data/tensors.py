"""Decode once, train many times: a dataset split as one memory-mapped uint8 array on disk.

Images are decoded, EXIF-rotated, resized and centre-cropped to the training
size a single time and written, chunk by chunk, as a raw ``(N, 3, S, S)`` uint8
file in the cache folder (labels and paths beside it in a ``.meta.npz``, written
last, so a half-written cache is never read). The split is then opened as a
memory map: batches are sliced from it and augmented on the training device, and
a split larger than memory costs disk, not RAM. Each dataset's cache is bounded
(``Limits.decoded_cache_gb``) and checked against the free disk before writing;
a caller that only needs one pass (the linear probe's features) streams the
decoded chunks instead of caching them when they would not fit.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine.data.dataset import Dataset, load_dataset
from engine.data.images import ImageProblem, load_rgb, resize_center_crop
from engine.errors import UserError
from engine.settings.limits import limits
from engine.workspace import atomic_path, cache_dir

__all__ = ["SplitTensors", "decode_split", "load_split", "iter_decoded", "iter_decoded_rows", "decoded_cache_problem",
           "decoded_bytes", "DECODE_CHUNK"]

# Images decoded (and held in memory) at a time: 256 x 3 x 224 x 224 bytes is 38 MB.
DECODE_CHUNK = 256
# Free disk left over after writing a cache, so the cache never fills the disk for everything else.
_DISK_MARGIN_BYTES = 512 * 2**20
Progress = Callable[[int, int], None]


@dataclass
class SplitTensors:
    images: torch.Tensor  # (N, 3, S, S) uint8: memory-mapped from ``source`` when read from the cache
    labels: torch.Tensor  # (N,) int64, index into classes
    paths: list[str]
    source: Path | None = None  # the raw cache file behind ``images``

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The images in order, ``batch_size`` at a time. From the cache file they are read, not
        mapped, so one pass over a split larger than memory leaves no pages resident."""
        if self.source is None or len(self) == 0:
            for start in range(0, len(self), batch_size):
                yield self.images[start : start + batch_size]
            return
        shape = tuple(self.images.shape[1:])
        row = int(np.prod(shape))
        with open(self.source, "rb") as f:
            for start in range(0, len(self), batch_size):
                n = min(batch_size, len(self) - start)
                block = np.frombuffer(f.read(n * row), dtype=np.uint8).reshape(n, *shape)
                yield torch.from_numpy(block.copy())


def _decode_one(path: Path, size: int) -> np.ndarray | None:
    try:
        return resize_center_crop(load_rgb(path), size)
    except ImageProblem:
        return None


def _split_rows(dataset: Dataset, split: str) -> pd.DataFrame:
    return dataset.usable[dataset.usable["split"] == split]


def iter_decoded(dataset: Dataset, split: str, size: int, classes: list[str], progress: Progress | None = None,
                 chunk: int = DECODE_CHUNK) -> Iterator[SplitTensors]:
    """The usable images of ``split`` decoded at ``size`` px, ``chunk`` at a time, in memory only.

    A file broken after the scan is skipped, not fatal; two threads decode (PIL releases the GIL).
    """
    return iter_decoded_rows(dataset, _split_rows(dataset, split), size, classes, progress, chunk)


def iter_decoded_rows(dataset: Dataset, rows: pd.DataFrame, size: int, classes: list[str],
                      progress: Progress | None = None, chunk: int = DECODE_CHUNK) -> Iterator[SplitTensors]:
    """:func:`iter_decoded` for any manifest rows of ``dataset`` (a sample across splits), in their order."""
    class_index = {name: i for i, name in enumerate(classes)}
    files = [dataset.root / p for p in rows["path"]]
    labels = [class_index[label] for label in rows["label"]]
    paths = [str(p) for p in rows["path"]]
    total = len(files)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, total, chunk):
            decoded = list(pool.map(lambda f: _decode_one(f, size), files[start : start + chunk]))
            keep = [i for i, arr in enumerate(decoded) if arr is not None]
            arrays = [arr for arr in decoded if arr is not None]
            block = (np.stack(arrays).transpose(0, 3, 1, 2) if arrays
                     else np.zeros((0, 3, size, size), dtype=np.uint8))
            yield SplitTensors(torch.from_numpy(np.ascontiguousarray(block)),
                               torch.tensor([labels[start + i] for i in keep], dtype=torch.int64),
                               [paths[start + i] for i in keep])
            if progress:
                progress(min(start + chunk, total), total)


def decoded_bytes(images: int, size: int) -> int:
    """Disk one split of ``images`` takes decoded at ``size`` px."""
    return int(images) * 3 * int(size) * int(size)


def _cache_files(dataset: Dataset, split: str, size: int) -> tuple[Path, Path]:
    base = cache_dir() / f"{dataset.fingerprint()}-{split}-{size}"
    return Path(f"{base}.u8"), Path(f"{base}.meta.npz")


def decoded_cache_problem(dataset: Dataset, split: str, size: int) -> str | None:
    """Why ``split`` cannot be cached decoded at ``size`` px (over the dataset's budget, or more
    than the disk has free), or None when it is cached already or fits."""
    data_file, meta_file = _cache_files(dataset, split, size)
    if meta_file.is_file() and data_file.is_file():
        return None
    need = decoded_bytes(len(_split_rows(dataset, split)), size)
    budget = limits().decoded_cache_gb * 1e9
    others = sum(p.stat().st_size for p in data_file.parent.glob(f"{dataset.fingerprint()}-*-{size}.u8")
                 if p != data_file)
    what = f"the {split} split decoded at {size} px needs {need / 1e9:.2f} GB of cache"
    if others + need > budget:
        return (f"{what}, over the {budget / 1e9:.1f} GB this dataset may keep ({others / 1e9:.2f} GB used); "
                "lower the image size, train --mode linear (it streams), or raise TS_DECODED_CACHE_GB")
    data_file.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(data_file.parent).free
    if need + _DISK_MARGIN_BYTES > free:
        return f"{what} but the disk has {free / 1e9:.2f} GB free; free some space or lower the image size"
    return None


def _open_cache(data_file: Path, meta_file: Path) -> SplitTensors:
    with np.load(meta_file, allow_pickle=False) as meta:
        shape = tuple(int(v) for v in meta["shape"])
        labels, paths = meta["labels"].astype(np.int64), [str(p) for p in meta["paths"]]
    if data_file.stat().st_size != int(np.prod(shape)) or len(labels) != shape[0]:
        raise ValueError("cache file does not match its metadata")
    if shape[0] == 0:
        return SplitTensors(torch.zeros(shape, dtype=torch.uint8), torch.from_numpy(labels), paths)
    # Copy-on-write: a writable array for torch, pages shared with the page cache, the file never changed.
    images = np.memmap(data_file, dtype=np.uint8, mode="c", shape=shape)
    return SplitTensors(torch.from_numpy(images), torch.from_numpy(labels), paths, source=data_file)


def decode_split(dataset: Dataset, split: str, size: int, classes: list[str],
                 progress: Progress | None = None) -> SplitTensors:
    """The usable images of ``split`` at ``size`` px, memory-mapped from the cache (decoded into it first
    when absent). Raises :class:`UserError` when the cache would not fit (see :func:`decoded_cache_problem`)."""
    data_file, meta_file = _cache_files(dataset, split, size)
    if meta_file.is_file() and data_file.is_file():
        try:
            return _open_cache(data_file, meta_file)
        except Exception:
            meta_file.unlink(missing_ok=True)  # damaged cache: rebuild it
    problem = decoded_cache_problem(dataset, split, size)
    if problem:
        raise UserError(problem)
    meta_file.unlink(missing_ok=True)
    labels: list[torch.Tensor] = []
    paths: list[str] = []
    with atomic_path(data_file) as tmp, open(tmp, "wb") as out:
        for block in iter_decoded(dataset, split, size, classes, progress):
            out.write(block.images.numpy().tobytes())
            labels.append(block.labels)
            paths.extend(block.paths)
    label_array = torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64)
    with atomic_path(meta_file) as tmp, open(tmp, "wb") as f:
        np.savez(f, labels=label_array, paths=np.array(paths, dtype=str),
                 shape=np.array([len(paths), 3, size, size], dtype=np.int64))
    return _open_cache(data_file, meta_file)


def load_split(config: dict, split: str, size: int, classes: list[str]) -> SplitTensors:
    """The ``split`` images of a run's dataset, decoded at ``size`` px as training saw them.

    ``config`` is a run's config.json (dataset, val_fraction, seed).
    """
    dataset = load_dataset(config["dataset"], val_fraction=config.get("val_fraction", 0.2), seed=config.get("seed", 0))
    return decode_split(dataset, split, size, classes)
