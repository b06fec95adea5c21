"""The manifest of a dataset folder: one row per file, read once and remembered.

Class folders (optionally under ``train/``, ``val/``, ``test/``) or the rows of a labels
table; each file's size, decoded header, content hash and perceptual hash are read once
(two threads) and cached per folder, so a rescan reads only the files that changed.
"""
from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pandas as pd

from engine.data.images import IMAGE_SUFFIXES, inspect_file
from engine.data.tables import TABLE_NAMES, read_table
from engine.workspace import atomic_path, cache_dir, shared_cache_dir, workspace_root

__all__ = ["scan", "check_label", "find_table", "MANIFEST_COLUMNS", "SPLIT_ALIASES", "MAX_LABEL_LENGTH", "Progress"]

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
# hash: content hash of the bytes (exact duplicates); phash: 64-bit DCT perceptual hash
# (near duplicates);
# mtime_ns lets a rescan skip files that have not changed.
MANIFEST_COLUMNS = ["path", "label", "split", "width", "height", "mode", "bytes", "status",
                    "hash", "phash", "mtime_ns"]
_FACT_COLUMNS = ["width", "height", "mode", "hash", "phash", "status"]
MAX_LABEL_LENGTH = 100
_SCAN_THREADS = 2
_SCAN_CHUNK = 128
Progress = Callable[[int, int], None]


def check_label(label: str) -> str | None:
    """Why a class name cannot be used, or None. Unicode names are fine."""
    if not label.strip():
        return "empty class name"
    if len(label) > MAX_LABEL_LENGTH:
        return f"class name longer than {MAX_LABEL_LENGTH} characters"
    if "/" in label or "\\" in label:
        return "class name contains a path separator"
    if any(ord(c) < 32 for c in label):
        return "class name contains control characters"
    return None


def _manifest_cache_file(root: Path) -> Path:
    # The version part changes whenever the per-file facts are computed differently.
    key = hashlib.blake2b(f"v4:{Path(root).resolve()}".encode(), digest_size=10).hexdigest()
    # A built-in dataset or an operator's folder is the same for every visitor: its facts are cached once for
    # the server, and a visitor who only looks at one writes nothing into their workspace.
    mine = Path(root).resolve().is_relative_to(workspace_root().resolve())
    return (cache_dir() if mine else shared_cache_dir()) / "manifests" / f"{key}.parquet"


def _read_facts_cache(root: Path) -> dict[str, dict]:
    try:
        cached = pd.read_parquet(_manifest_cache_file(root))
    except Exception:  # missing or damaged: rebuild
        return {}
    return {row["path"]: row for row in cached.to_dict("records")}


def _write_facts_cache(root: Path, manifest: pd.DataFrame) -> None:
    try:
        with atomic_path(_manifest_cache_file(root)) as tmp:
            manifest.to_parquet(tmp, index=False)
    except OSError:
        pass  # a cache we cannot write only costs time


def _fill_facts(root: Path, rows: list[dict], progress: Progress | None) -> None:
    """Content hash, perceptual hash, size and status of every pending row.

    Files whose size and mtime match the cached manifest are not read again;
    the rest are read once each, two at a time (decoders release the GIL).
    """
    cached = _read_facts_cache(root)
    todo = []
    for row in rows:
        if row["status"] != "ok":
            continue
        old = cached.get(row["path"])
        if (old is not None and old["bytes"] == row["bytes"] and old["mtime_ns"] == row["mtime_ns"]
                and all(k in old for k in _FACT_COLUMNS)):
            row.update({k: old[k] for k in _FACT_COLUMNS})
        else:
            todo.append(row)
    total = len(todo)
    if progress:
        progress(0, total)
    root_text = str(root)
    chunks = [todo[i : i + _SCAN_CHUNK] for i in range(0, total, _SCAN_CHUNK)]

    def work(chunk: list[dict]) -> list[dict]:
        return [inspect_file(os.path.join(root_text, row["path"])) for row in chunk]

    done = 0
    # Chunks, not one task per file: tiny files are dominated by per-task overhead.
    with ThreadPoolExecutor(max_workers=_SCAN_THREADS) as pool:
        for chunk, results in zip(chunks, pool.map(work, chunks)):
            for row, facts in zip(chunk, results):
                row.update(facts)
            done += len(chunk)
            if progress:
                progress(done, total)


def _manifest_row(path: str, label: str, split: str, st: os.stat_result | None = None, status: str = "ok") -> dict:
    """One manifest row before its facts are read (``st``: the file's stat, None when there is no file)."""
    return {"path": path, "label": label, "split": split, "width": 0, "height": 0, "mode": "",
            "bytes": st.st_size if st else 0, "status": status, "hash": "", "phash": 0,
            "mtime_ns": st.st_mtime_ns if st else 0}


def _walk_files(folder: Path) -> list[tuple[str, os.stat_result]]:
    """Regular files under ``folder`` (relative posix paths, stats), skipping hidden files and links."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, folder)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                found.append((name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"), st))
    return found


def _scan_classes(folder: Path, root: Path, split: str, rows: list[dict], problems: list[str]) -> None:
    prefix = folder.relative_to(root).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    # A linked class folder is skipped: in a server data root it could lead anywhere on the server.
    # ``unlabelled/`` at the top is the dataset's unlabelled pool (engine/dataloop/pool.py), not a class.
    for class_dir in sorted(p for p in folder.iterdir()
                            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                            and not (folder == root and p.name == "unlabelled")):
        label = class_dir.name
        bad_label = check_label(label)
        files = _walk_files(class_dir)
        if not files:
            where = f"{split}/{label}" if split else label
            problems.append(f"class folder '{where}' is empty and was ignored")
        for rel, st in files:
            suffix = os.path.splitext(rel)[1].lower()
            row = _manifest_row(f"{prefix}{label}/{rel}", label, split, st)
            if bad_label:
                row["status"] = f"{bad_label} ({label[:40]!r})"
            elif suffix not in IMAGE_SUFFIXES:
                row["status"] = f"not an image file ({suffix or 'no extension'})"
            rows.append(row)
    loose = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        problems.append(f"{len(loose)} image(s) directly in {folder.name or 'the top folder'} are not in a class "
                        "folder and were ignored")


def _table_path(text: str, root: Path, real_root: Path) -> tuple[Path | None, str | None]:
    """The file a table row names, or why it cannot be used. Never looks outside ``root``."""
    posix = PurePosixPath(text.strip().replace("\\", "/"))
    if not text.strip():
        return None, "empty path"
    if posix.is_absolute() or (posix.parts and posix.parts[0].endswith(":")) or ".." in posix.parts:
        return None, "path leaves the dataset folder (absolute or '..'); only paths inside it are read"
    path = root.joinpath(*posix.parts)
    try:
        if not path.resolve().is_relative_to(real_root):
            return None, "path leaves the dataset folder through a link"
    except (OSError, RuntimeError):
        return None, "path cannot be resolved"
    if not path.is_file():
        return None, "file listed in the table does not exist"
    return path, None


def _scan_table(table: Path, root: Path, rows: list[dict], problems: list[str]) -> None:
    frame = read_table(table)
    real_root = root.resolve()
    seen: set[str] = set()
    splits = frame["split"] if "split" in frame.columns else [""] * len(frame)
    for number, (text, label, split_text) in enumerate(zip(frame["path"], frame["label"], splits), start=2):
        text, label, split_text = str(text), "" if pd.isna(label) else str(label).strip(), str(split_text).strip()
        split = SPLIT_ALIASES.get(split_text.lower(), "") if split_text else ""
        path, why = _table_path(text, root, real_root)
        rel = path.relative_to(root).as_posix() if path is not None else text
        if path is not None:
            row = _manifest_row(rel, label, split, path.stat())
        else:
            row = _manifest_row(text, label, split, status=f"row {number}: {why}")
        bad_label = check_label(label)
        if why is None and rel in seen:
            row["status"] = f"row {number}: file listed more than once in the table"
        elif why is None and bad_label:
            row["status"] = f"row {number}: {bad_label} ({label[:40]!r})"
        elif why is None and split_text and not split:
            row["status"] = f"row {number}: unknown split {split_text[:20]!r} (use train, val or test)"
        elif path is not None and path.suffix.lower() not in IMAGE_SUFFIXES:
            row["status"] = f"not an image file ({path.suffix or 'no extension'})"
        seen.add(rel)
        rows.append(row)
    if not rows:
        problems.append(f"{table.name} lists no images")


def find_table(root: Path) -> Path | None:
    """``labels.csv`` / ``labels.parquet`` at the top of a folder makes it a table dataset."""
    for name in TABLE_NAMES:
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


def scan(root: Path, table: Path | None = None,
          progress: Progress | None = None) -> tuple[pd.DataFrame, list[str], Path]:
    """The manifest of ``root``: one row per file, hashed and header-checked once.

    Class folders (optionally under ``train/``, ``val/``, ``test/``), or the
    rows of ``table`` (a CSV/parquet of path,label[,split] relative to
    ``root``; found automatically as ``labels.csv`` at the top).
    """
    root = Path(root)
    table = table or find_table(root)
    rows: list[dict] = []
    problems: list[str] = []
    if table is not None:
        _scan_table(Path(table), root, rows, problems)
    else:
        # A zip of one wrapping folder: look inside it.
        entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        if len(entries) == 1 and entries[0].is_dir() and entries[0].name.lower() not in SPLIT_ALIASES:
            inner = [p for p in entries[0].iterdir() if p.is_dir()]
            if inner and all(any(c.is_dir() for c in d.iterdir()) or d.name.lower() in SPLIT_ALIASES for d in inner):
                root = entries[0]
        subdirs = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
        split_dirs = {p: SPLIT_ALIASES[p.name.lower()] for p in subdirs if p.name.lower() in SPLIT_ALIASES}
        if split_dirs and "train" in split_dirs.values():
            for folder, split in split_dirs.items():
                _scan_classes(folder, root, split, rows, problems)
        else:
            _scan_classes(root, root, "", rows, problems)
    _fill_facts(root, rows, progress)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest = manifest.astype({"phash": "int64", "width": "int64", "height": "int64",
                                "bytes": "int64", "mtime_ns": "int64"})
    if len(manifest):
        _write_facts_cache(root, manifest)
    return manifest, problems, root
