"""Where datasets, runs and caches live on disk.

Everything the product writes goes under one root so a hosted install can put it
on a volume: ``$TRANSFER_STUDIO_HOME`` or ``./workspace`` beside the code.

That root (:func:`home`) holds what the whole server shares: the job queue, the
dispatcher's lock, built-in datasets (:func:`shared_datasets_dir`) and supplied
weights. A visitor's own files (uploads, runs, caches) live under
:func:`workspace_root`: ``home()`` itself for local use, ``home()/workspaces/<id>``
on the hosted profile. Which workspace is current is decided, in order, by
:func:`use_workspace` (this thread or context), the resolver the app registers
with :func:`set_workspace_resolver` (the Streamlit session), and ``$TS_WORKSPACE``
(a background process started by :func:`child_env`); with none, ``home()``.

Reading a visitor's path never creates anything: their folder appears on the first write into it
(:func:`atomic_path`, a run directory, an extracted upload), so a page view costs no disk.
"""
from __future__ import annotations

import contextvars
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["home", "workspace_root", "workspaces_dir", "workspace_id", "use_workspace", "set_workspace_resolver",
           "workspace_of", "valid_workspace_id", "child_env", "WORKSPACE_ENV", "shared_datasets_dir",
           "shared_cache_dir", "datasets_dir", "runs_dir", "cache_dir", "atomic_path", "atomic_dir",
           "dir_complete", "dest_lock", "COMPLETE_MARKER",
           "write_text_atomic", "write_json_atomic", "read_json", "file_sha256", "SECRET_ENV_VARS", "strip_secrets"]

_REPO_ROOT = Path(__file__).resolve().parent.parent
WORKSPACE_ENV = "TS_WORKSPACE"
# A workspace id is a hex digest (never the visitor's token): safe as a folder name and in logs.
_ID = re.compile(r"[0-9a-f]{16,64}")
_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("ts_workspace", default=None)
_RESOLVER: list[Callable[[], str | None]] = []
# Server secrets no background process needs: a job, task or Ray actor runs the visitor's work and
# must not be able to read the password that guards the server (an operator may name more, comma-separated).
SECRET_ENV_VARS = ("TS_PASSWORD",)
_MORE_SECRETS_ENV = "TS_SECRET_ENV"


def home() -> Path:
    """The server-wide root: job queue, dispatcher lock, built-in datasets, supplied weights."""
    root = Path(os.environ.get("TRANSFER_STUDIO_HOME", _REPO_ROOT / "workspace"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def valid_workspace_id(text: str | None) -> bool:
    return bool(text) and _ID.fullmatch(str(text)) is not None


def workspaces_dir() -> Path:
    """Where the visitors' workspaces live on the hosted profile (one folder per workspace id)."""
    return home() / "workspaces"


def workspace_id() -> str | None:
    """The current workspace's id, or None for the single local workspace (``home()``)."""
    chosen = _CURRENT.get()  # "": a use_workspace(None) block, the server root on purpose
    if chosen is None and _RESOLVER:
        chosen = _RESOLVER[0]()
    if chosen is None:
        chosen = os.environ.get(WORKSPACE_ENV)
    return chosen if valid_workspace_id(chosen) else None


def workspace_root() -> Path:
    """The current visitor's root: uploads, runs and caches go under it (not created here: the first
    write into it creates it, so a visitor who only looks costs the server no folder)."""
    wid = workspace_id()
    return home() if wid is None else workspaces_dir() / wid


@contextmanager
def use_workspace(wid: str | None) -> Iterator[None]:
    """Make ``wid`` the current workspace in this thread/context for the block (None: the server root)."""
    if wid is not None and not valid_workspace_id(wid):
        raise ValueError(f"not a workspace id: {wid!r}")
    token = _CURRENT.set(wid or "")
    try:
        yield
    finally:
        _CURRENT.reset(token)


def set_workspace_resolver(resolver: Callable[[], str | None] | None) -> None:
    """Register how the app finds the current session's workspace id (consulted when no
    :func:`use_workspace` block is active); None removes it."""
    _RESOLVER[:] = [resolver] if resolver is not None else []


def workspace_of(path: Path | str) -> str | None:
    """The id of the workspace that holds ``path`` (a run directory, say), or None when it is in none."""
    try:
        rel = Path(path).resolve().relative_to(workspaces_dir().resolve())
    except ValueError:
        return None
    return rel.parts[0] if rel.parts and valid_workspace_id(rel.parts[0]) else None


def strip_secrets(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the server's secrets (:data:`SECRET_ENV_VARS` and those ``$TS_SECRET_ENV`` names)."""
    extra = [name.strip() for name in os.environ.get(_MORE_SECRETS_ENV, "").split(",") if name.strip()]
    secret = {*SECRET_ENV_VARS, *extra}
    return {key: value for key, value in env.items() if key not in secret}


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a background process: ``base`` (default ``os.environ``) with the current
    workspace, so the process writes where the visitor who started it reads, and without the server's
    secrets (:func:`strip_secrets`)."""
    env = strip_secrets(dict(os.environ if base is None else base))
    wid = workspace_id()
    if wid is None:
        env.pop(WORKSPACE_ENV, None)
    else:
        env[WORKSPACE_ENV] = wid
    return env


def _subdir(name: str) -> Path:
    path = workspace_root() / name
    if workspace_id() is None:  # the server root's own folders (local use), made as home() is
        path.mkdir(parents=True, exist_ok=True)
    return path  # a visitor's: created by the first write into it


def shared_datasets_dir() -> Path:
    """Built-in datasets, built once and read by every workspace."""
    path = home() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_cache_dir() -> Path:
    """Files derived only from published or operator-supplied backbone weights (ONNX backbones,
    latency measured on this host): the same for every visitor, so built once per server."""
    path = home() / "cache"
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
    The stage is a folder of its own (never one named by the pid, which every Streamlit
    session shares) and gets the completion marker (:func:`dir_complete`) before the rename;
    builders that must not race hold :func:`dest_lock` around the check and the build.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))
    try:
        yield stage
        (stage / COMPLETE_MARKER).touch()
        aside = None
        if dest.is_dir() and not dir_complete(dest):  # unfinished, or from before the markers
            aside = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
            os.replace(dest, aside / dest.name)
        try:
            os.replace(stage, dest)
        except OSError:
            shutil.rmtree(stage, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


COMPLETE_MARKER = ".complete"


def dir_complete(dest: Path | str) -> bool:
    """Whether ``dest`` is a folder :func:`atomic_dir` finished (its completion marker is inside)."""
    return (Path(dest) / COMPLETE_MARKER).is_file()


@contextmanager
def dest_lock(dest: Path | str) -> Iterator[None]:
    """One builder at a time for the folder ``dest``, across threads, sessions and processes (an fcntl
    lock on a file named by ``dest``'s path under ``home()/locks``, never beside ``dest``, so a refused
    upload leaves nothing in the datasets folder): two first visitors, or two tabs uploading one zip,
    build it once."""
    locks = home() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(str(Path(dest).resolve()).encode()).hexdigest()[:32]
    with open(locks / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
