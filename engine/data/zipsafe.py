"""Reading an untrusted .zip without exhausting memory, writing outside its folder or filling the disk.

One bounded reader serves dataset ingestion (:func:`safe_extract`) and prediction uploads
(:func:`open_zip` + :func:`zip_members` + :func:`read_member`, one member at a time). The entry count
and the central directory's size are read from the end-of-central-directory record before
:mod:`zipfile` parses the directory: a few hundred MB of empty entries would otherwise cost gigabytes
of ``ZipInfo`` before any count could be checked.
"""
from __future__ import annotations

import io
import stat
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from engine.errors import UserError
from engine.workspace import atomic_dir

__all__ = ["ZipLimits", "safe_extract", "max_upload_bytes", "check_upload_size", "declared_entries",
           "open_zip", "zip_members", "read_member"]


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
    # Central directory bytes per entry allowed on average (a real entry is ~100-300 bytes).
    max_directory_bytes_per_entry = 1024
    max_total_bytes = 4 * 1024**3  # uncompressed
    max_entry_bytes = 256 * 1024**2
    max_ratio = 200  # uncompressed / compressed, per entry (entries over 1 MB) and overall
    max_name_chars = 1024  # a whole member path
    max_part_chars = 255  # one folder or file name (the filesystem's own limit)


_SKIP_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db"}
_ARCHIVE_SUFFIXES = {".zip", ".tar", ".gz", ".7z", ".rar"}
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_RATIO_FLOOR = 1024**2  # small files may compress far better than 200:1 (a blank page); only bigger ones count


def declared_entries(fp: BinaryIO) -> tuple[int, int]:
    """(entries, central directory bytes) as the end-of-central-directory record declares them (zip64
    included), read from the file's tail without parsing the directory; UserError if there is none."""
    fp.seek(0, io.SEEK_END)
    size = fp.tell()
    tail_start = max(0, size - _EOCD.size - 0xFFFF)
    fp.seek(tail_start)
    tail = fp.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise UserError("not a zip archive (no end-of-directory record); upload a .zip")
    _sig, _disk, _cd_disk, _n_disk, entries, cd_bytes, _cd_offset, _comment = _EOCD.unpack_from(tail, at)
    if entries == 0xFFFF or cd_bytes == 0xFFFFFFFF:
        locator_at = tail_start + at - _ZIP64_LOCATOR.size
        if locator_at >= 0:
            fp.seek(locator_at)
            sig, _disk64, eocd64_at, _disks = _ZIP64_LOCATOR.unpack(fp.read(_ZIP64_LOCATOR.size))
            if sig == b"PK\x06\x07" and 0 <= eocd64_at < size:
                fp.seek(eocd64_at)
                record = fp.read(_ZIP64_EOCD.size)
                if len(record) == _ZIP64_EOCD.size and record[:4] == b"PK\x06\x06":
                    values = _ZIP64_EOCD.unpack(record)
                    entries, cd_bytes = values[7], values[8]
    fp.seek(0)
    return int(entries), int(cd_bytes)


@contextmanager
def open_zip(source: Path | str | BinaryIO, name: str, limits: type[ZipLimits] = ZipLimits
             ) -> Iterator[zipfile.ZipFile]:
    """A :class:`zipfile.ZipFile` of ``source`` (a path or a binary file object), opened only after its
    declared entry count and directory size are within the limits; every failure of the archive
    (damaged, unsupported, unreadable) becomes one UserError line naming ``name``. A filesystem error
    of the caller's own work inside the ``with`` block is the caller's to report."""
    opened = False
    try:
        with (open(source, "rb") if isinstance(source, (str, Path)) else _borrowed(source)) as fp:
            try:
                entries, cd_bytes = declared_entries(fp)
            except UserError:
                raise UserError(f"{name} is not a zip archive; upload a .zip of images or class folders") from None
            if entries > limits.max_entries:
                raise UserError(f"{name} has {entries:,} entries, over the limit of {limits.max_entries:,}; "
                                "upload fewer files")
            if cd_bytes > max(entries, 1) * limits.max_directory_bytes_per_entry + 65536:
                raise UserError(f"{name}'s directory is {cd_bytes / 1024**2:,.1f} MB for {entries:,} entries; "
                                "that is not a normal zip, so it was not read")
            with zipfile.ZipFile(fp) as archive:
                opened = True
                yield archive
    except UserError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError,
            RuntimeError) as exc:
        raise UserError(f"{name} is a damaged or unsupported zip ({str(exc)[:120]}); re-create it and upload "
                        "again") from None
    except OSError as exc:
        if opened:
            raise
        raise UserError(f"{name} cannot be read ({exc.strerror or type(exc).__name__}); upload it again") from None


@contextmanager
def _borrowed(fp: BinaryIO) -> Iterator[BinaryIO]:
    yield fp  # the caller's file object: not closed here


def _member_problem(info: zipfile.ZipInfo, posix: PurePosixPath, limits: type[ZipLimits]) -> str | None:
    """Why one member must not be read, or None."""
    name = info.filename
    if len(name) > limits.max_name_chars or any(len(part) > limits.max_part_chars for part in posix.parts):
        return f"name is too long ({len(name):,} characters); shorten the file and folder names"
    if posix.is_absolute() or (posix.parts and posix.parts[0].endswith(":")):
        return "absolute path; zip the folders themselves"
    if ".." in posix.parts:
        return "path leaves its folder ('..'); rebuild the zip without it"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link; links are not allowed"
    if posix.suffix.lower() in _ARCHIVE_SUFFIXES:
        return "another archive inside the zip; unpack it first"
    if info.file_size > limits.max_entry_bytes:
        return (f"{info.file_size / 1024**2:,.0f} MB unpacked, over the "
                f"{limits.max_entry_bytes // 1024**2} MB per-file limit")
    if info.file_size > _RATIO_FLOOR and info.file_size / max(1, info.compress_size) > limits.max_ratio:
        return (f"compressed {info.file_size / max(1, info.compress_size):,.0f}:1, which looks like a zip bomb; "
                "it was not unpacked")
    return None


def zip_members(archive: zipfile.ZipFile, limits: type[ZipLimits] = ZipLimits
                ) -> Iterator[tuple[zipfile.ZipInfo, PurePosixPath, str | None]]:
    """Every file member, skipping folders and OS junk: (info, path, why it must not be read, or None).

    A name that is both a file and a folder (``a`` and ``a/b``) is a problem of the later one.
    """
    files: set[PurePosixPath] = set()
    folders: set[PurePosixPath] = set()
    for info in archive.infolist():
        posix = PurePosixPath(info.filename.replace("\\", "/"))
        if any(part in _SKIP_PARTS or part.startswith("._") for part in posix.parts):
            continue
        parents = set(posix.parents) - {PurePosixPath(".")}
        if info.is_dir():
            folders |= parents | {posix}
            if posix in files:
                yield info, posix, "is both a file and a folder in the zip; rename one of them"
            continue
        problem = _member_problem(info, posix, limits)
        if problem is None and (posix in folders or posix in files or parents & files):
            problem = "is both a file and a folder (or listed twice) in the zip; rename one of them"
        files.add(posix)
        folders |= parents
        yield info, posix, problem


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """One member's bytes, read in chunks and refused past ``limit`` (the declared size can lie)."""
    chunks, size = [], 0
    with archive.open(info) as src:
        while chunk := src.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise UserError(f"{info.filename!r} unpacks past {limit / 1024**2:,.0f} MB; it was not read")
            chunks.append(chunk)
    return b"".join(chunks)


def safe_extract(zip_path: Path, dest: Path, limits: type[ZipLimits] = ZipLimits) -> Path:
    """Extract ``zip_path`` into a new folder ``dest`` (atomically: all or nothing).

    Refuses zip slip (``..``, absolute paths), symlinks, nested zips, too many entries (counted from
    the end record before the directory is parsed), over-long names, a name that is a file and a folder,
    and entries whose declared size, real size or compression ratio breaks the limits; every filesystem
    error becomes one UserError line.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    check_upload_size(zip_path)
    try:
        with open_zip(zip_path, zip_path.name, limits) as archive, atomic_dir(dest) as tmp:
            infos = archive.infolist()
            declared = sum(info.file_size for info in infos)
            compressed = max(1, sum(info.compress_size for info in infos))
            too_dense = declared / compressed > limits.max_ratio and declared > 64 * 1024**2
            if declared > limits.max_total_bytes or too_dense:
                raise UserError(
                    f"the zip would expand to {declared / 1024**2:,.0f} MB (ratio {declared / compressed:,.0f}:1); "
                    "that looks like a zip bomb, so it was not extracted"
                )
            written = 0
            for info, member, problem in zip_members(archive, limits):
                if problem:
                    raise UserError(f"{info.filename[:120]!r} in {zip_path.name}: {problem}")
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
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise UserError(f"{zip_path.name} is a damaged zip ({str(exc)[:120]}); re-create it and upload again") from None
    except OSError as exc:
        raise UserError(f"{zip_path.name} could not be unpacked ({exc.strerror or type(exc).__name__}); "
                        "check its file names and the free disk space, then upload again") from None
    return dest
