"""Where datasets, runs and caches live on disk.

Everything the product writes goes under one root so a hosted install can put it
on a volume: ``$TRANSFER_STUDIO_HOME`` or ``./workspace`` beside the code.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["home", "datasets_dir", "runs_dir", "cache_dir", "atomic_path", "atomic_dir", "write_text_atomic",
           "write_json_atomic", "read_json", "file_sha256"]

_REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    root = Path(os.environ.get("TRANSFER_STUDIO_HOME", _REPO_ROOT / "workspace"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _subdir(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_dir() -> Path:
    return _subdir("datasets")


def runs_dir() -> Path:
    return _subdir("runs")


def cache_dir() -> Path:
    return _subdir("cache")


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write anything to (bytes, torch.save, parquet, a zip, an ONNX file).

    When the block succeeds the temporary file replaces ``path`` in one step, so a
    reader in another process never sees half a file; when it fails it is removed.
    The temporary name keeps ``path``'s suffix, for writers that look at it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(dest: Path | str) -> Iterator[Path]:
    """A fresh staging folder beside ``dest`` that becomes ``dest`` in one rename when the block succeeds.

    For a folder built once and then only read (an extracted dataset, a built-in
    one): when ``dest`` appeared meanwhile (another process finished first; theirs
    is as good as ours) the staged copy is dropped; when the block fails it is removed.
    """
    dest = Path(dest)
    stage = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
        try:
            os.replace(stage, dest)
        except OSError:
            shutil.rmtree(stage, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path | str, obj) -> None:
    """Write JSON so a reader in another process never sees half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_json(path: Path | str, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default
