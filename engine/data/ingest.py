"""Every way a dataset comes in, and which dataset names a visitor may open.

Uploads (a .zip of class folders, or a CSV/parquet table plus a .zip of the
images) are extracted safely into a new folder under the workspace datasets
dir, named by content hash so re-uploading the same file reuses it. Folders
on the server are offered only under the data roots an operator lists in
``$TS_DATA_ROOTS`` (``os.pathsep``-separated); a path typed by a visitor or
taken from the URL is never opened unless :func:`validate_spec` allows it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from engine.data.builtin import BUILTIN_DATASETS
from engine.data.tables import TABLE_NAMES, TABLE_SUFFIXES, read_table
from engine.data.images import IMAGE_SUFFIXES
from engine.data.zipsafe import check_upload_size, open_zip, safe_extract
from engine.errors import UserError
from engine.settings.limits import check_dataset_upload, check_free_disk, check_room_for_new_workspace
from engine.workspace import atomic_dir, datasets_dir, dest_lock, dir_complete, file_sha256, home, shared_datasets_dir

__all__ = [
    "data_roots",
    "validate_spec",
    "dataset_folder",
    "ingest_zip",
    "ingest_table",
    "server_datasets",
    "uploaded_datasets",
    "uploads_dir",
]

_MAX_LISTED = 500


def data_roots() -> list[Path]:
    """Operator-configured folders whose datasets visitors may open (``$TS_DATA_ROOTS``).

    A root that holds ``$TRANSFER_STUDIO_HOME`` (or lies inside it) is refused: it would offer every
    visitor's uploads and runs to everyone as a dataset."""
    server_root = home().resolve()
    roots = []
    for text in os.environ.get("TS_DATA_ROOTS", "").split(os.pathsep):
        if text.strip():
            path = Path(text.strip()).expanduser().resolve()
            if path.is_relative_to(server_root) or server_root.is_relative_to(path):
                raise UserError(f"TS_DATA_ROOTS lists {path}, which overlaps the server's own folder "
                                f"{server_root} (TRANSFER_STUDIO_HOME) and would show every visitor's files; "
                                "list only folders of datasets outside it")
            if path.is_dir():
                roots.append(path)
    return roots


def uploads_dir() -> Path:
    """Where the page saves an upload before extracting it (inside the workspace). A new workspace's first
    upload is its first write: refused in words when the server is full (workspaces, free disk)."""
    check_room_for_new_workspace()
    check_free_disk()
    path = datasets_dir() / ".uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def validate_spec(spec: str | None) -> str:
    """``spec`` if a visitor may open it, else a UserError saying why.

    Allowed: a built-in dataset name; a folder (or CSV/parquet table) under
    the workspace datasets dir or under an operator data root. Links are
    resolved first, so a symlink cannot lead outside those roots.
    """
    text = str(spec or "").strip()
    if text in BUILTIN_DATASETS:
        return text
    if not text:
        raise UserError("no dataset given")
    try:
        real = Path(text).resolve()
    except (OSError, RuntimeError, ValueError):
        raise UserError(f"dataset '{text[:80]}' is not a valid path") from None
    allowed = [datasets_dir().resolve(), shared_datasets_dir().resolve(), *data_roots()]
    if not any(real != root and real.is_relative_to(root) for root in allowed):
        raise UserError(f"dataset '{text[:80]}' is not a built-in dataset, an upload or under a configured "
                        "data root (TS_DATA_ROOTS); pick one on the Dataset page")
    if not (real.is_dir() or (real.is_file() and real.suffix.lower() in TABLE_SUFFIXES)):
        raise UserError(f"dataset '{text[:80]}' no longer exists; pick or upload another on the Dataset page")
    return str(real)


def dataset_folder(stem: str, *files: Path) -> Path:
    """Where the dataset made from ``files`` lives: its name and their content hash.

    The same upload (or the same .zip given on the command line) always maps to
    the same folder, so it is extracted and stored once.
    """
    digests = [file_sha256(path) for path in files]
    digest = digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40].strip("_") or "upload"
    return datasets_dir() / f"{safe}-{digest[:12]}"


def ingest_zip(zip_path: Path, name: str | None = None) -> Path:
    """Extract a .zip of class folders (uploaded, or named on the command line) into its own dataset folder."""
    zip_path = Path(zip_path)
    check_upload_size(zip_path)
    dest = dataset_folder(Path(name or zip_path.name).stem, zip_path)
    with dest_lock(dest):  # two tabs uploading the same zip extract it once
        if not dir_complete(dest):
            _check_limits(zip_path)
            safe_extract(zip_path, dest)
    return dest


def _check_limits(images_zip: Path) -> None:
    """Images per dataset and the workspace's disk quota, from the zip's directory, before extracting
    (the bounded reader checks the entry count from the zip's end record before the directory is parsed)."""
    with open_zip(images_zip, images_zip.name) as archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
    images = sum(1 for i in infos if Path(i.filename).suffix.lower() in IMAGE_SUFFIXES)
    check_dataset_upload(images, sum(i.file_size for i in infos))


def ingest_table(table_path: Path, images_zip: Path, name: str | None = None) -> Path:
    """A CSV/parquet of path,label[,split] plus a .zip of the images it names.

    The images are extracted into a new dataset folder and the table is stored
    beside them as ``labels.csv``/``labels.parquet``; the paths in the table
    are read relative to that folder, and rows that point outside it or at
    missing files are listed as problems when the dataset is scanned.
    """
    table_path, images_zip = Path(table_path), Path(images_zip)
    suffix = table_path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise UserError(f"{table_path.name} is not a .csv or .parquet table of path,label[,split]")
    check_upload_size(table_path)
    check_upload_size(images_zip)
    read_table(table_path)  # fail now, before extracting, if the columns are wrong
    stem = Path(name or table_path.name).stem
    dest = dataset_folder(stem, table_path, images_zip)
    with dest_lock(dest):
        if dir_complete(dest):
            return dest
        _check_limits(images_zip)
        with atomic_dir(dest) as stage:
            safe_extract(images_zip, stage)
            table_name = "labels.parquet" if suffix == ".parquet" else "labels.csv"
            for other in TABLE_NAMES:  # the uploaded table wins over one inside the zip
                (stage / other).unlink(missing_ok=True)
            shutil.copyfile(table_path, stage / table_name)
    return dest


def server_datasets() -> list[str]:
    """Dataset folders and tables an operator has put under the data roots (two levels deep)."""
    found: list[str] = []
    for root in data_roots():
        for depth_one in sorted(root.iterdir()):
            if len(found) >= _MAX_LISTED:
                return found
            if depth_one.name.startswith(".") or depth_one.is_symlink():
                continue  # a link could lead anywhere on the server
            if depth_one.is_dir():
                found.append(str(depth_one))
            elif depth_one.suffix.lower() in TABLE_SUFFIXES and depth_one.name not in TABLE_NAMES:
                found.append(str(depth_one))
    return found


def uploaded_datasets() -> list[str]:
    """Dataset folders made from uploads, newest first."""
    root = datasets_dir()
    folders = [p for p in (root.iterdir() if root.is_dir() else ())
               if p.is_dir() and not p.name.startswith(".") and not p.name.startswith("builtin-")]
    return [str(p) for p in sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True)]

