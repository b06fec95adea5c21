"""Extracting an untrusted .zip without writing outside its folder or filling the disk."""
from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from engine.errors import UserError
from engine.workspace import atomic_dir

__all__ = ["ZipLimits", "safe_extract", "max_upload_bytes", "check_upload_size"]

def max_upload_bytes() -> int:
    """Engine-side upload limit: the ``max_upload_mb`` limit (``$TS_MAX_UPLOAD_MB``, engine.settings.limits)."""
    from engine.settings.limits import limits

    return int(limits().max_upload_mb * 1024**2)


def check_upload_size(path: Path) -> None:
    """Refuse an upload over the limit before anything reads or extracts it."""
    size, limit = Path(path).stat().st_size, max_upload_bytes()
    if size > limit:
        raise UserError(f"{Path(path).name} is {size / 1024**2:,.1f} MB, over the {limit / 1024**2:,.0f} MB upload "
                        "limit (TS_MAX_UPLOAD_MB); upload fewer or smaller images")


class ZipLimits:
    max_entries = 50_000
    max_total_bytes = 4 * 1024**3  # uncompressed
    max_entry_bytes = 256 * 1024**2
    max_ratio = 200  # uncompressed / compressed, per entry and overall


_SKIP_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db"}


def _safe_member_path(name: str) -> PurePosixPath | None:
    """Relative path inside the archive, or None for junk we ignore."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (posix.parts and posix.parts[0].endswith(":")):
        raise UserError(f"the zip contains an absolute path ({name!r}); zip the class folders themselves")
    if ".." in posix.parts:
        raise UserError(f"the zip contains a path that leaves its folder ({name!r}); rebuild the zip without '..'")
    if any(part in _SKIP_PARTS or part.startswith("._") for part in posix.parts):
        return None
    return posix


def safe_extract(zip_path: Path, dest: Path, limits: type[ZipLimits] = ZipLimits) -> Path:
    """Extract ``zip_path`` into a new folder ``dest`` (atomically: all or nothing).

    Refuses zip slip (``..``, absolute paths), symlinks, nested zips, too many
    entries, and entries whose declared or actual size breaks the limits.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    check_upload_size(zip_path)
    if not zipfile.is_zipfile(zip_path):
        raise UserError(f"{zip_path.name} is not a zip archive; upload a .zip of class folders")
    try:
        with atomic_dir(dest) as tmp, zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
            if len(infos) > limits.max_entries:
                raise UserError(f"the zip has {len(infos):,} entries, over the limit of {limits.max_entries:,}")
            declared = sum(info.file_size for info in infos)
            compressed = max(1, sum(info.compress_size for info in infos))
            too_dense = declared / compressed > limits.max_ratio and declared > 64 * 1024**2
            if declared > limits.max_total_bytes or too_dense:
                raise UserError(
                    f"the zip would expand to {declared / 1024**2:,.0f} MB (ratio {declared / compressed:,.0f}:1); "
                    "that looks like a zip bomb, so it was not extracted"
                )
            written = 0
            for info in infos:
                member = _safe_member_path(info.filename)
                if member is None or info.is_dir():
                    continue
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise UserError(f"the zip contains a symbolic link ({info.filename!r}); links are not allowed")
                if member.suffix.lower() in {".zip", ".tar", ".gz", ".7z", ".rar"}:
                    raise UserError(f"the zip contains another archive ({info.filename!r}); unpack it first")
                if info.file_size > limits.max_entry_bytes:
                    raise UserError(f"{info.filename!r} is {info.file_size / 1024**2:,.0f} MB, over the per-file limit")
                target = tmp.joinpath(*member.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                # Count real bytes: the declared size in the header can lie.
                with archive.open(info) as src, open(target, "wb") as out:
                    entry_bytes = 0
                    while chunk := src.read(1 << 20):
                        entry_bytes += len(chunk)
                        written += len(chunk)
                        if entry_bytes > limits.max_entry_bytes or written > limits.max_total_bytes:
                            raise UserError("the zip expands past the size limit; that looks like a zip bomb")
                        out.write(chunk)
    except zipfile.BadZipFile as exc:
        raise UserError(f"{zip_path.name} is a damaged zip ({exc}); re-create it and upload again") from None
    return dest
