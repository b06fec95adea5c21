"""Where datasets, runs and caches live on disk.

Everything the product writes goes under one root so a hosted install can put it
on a volume: ``$TRANSFER_STUDIO_HOME`` or ``./workspace`` beside the code.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["home", "datasets_dir", "runs_dir", "cache_dir", "write_json_atomic", "read_json"]

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


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON so a reader in another process never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default
