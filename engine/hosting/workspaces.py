"""A visitor's workspace on the hosted profile: token -> workspace id, last use, idle clean-up (TTL).

A visitor holds an unguessable token (``secrets.token_urlsafe``), kept in the page URL
(``?ws=...``); the workspace folder is named by a digest of it, so neither the folder
nor a log line reveals the token, and the same token reopens the same workspace after a
refresh, a closed tab or a server restart. A logged-in visitor's workspace is a digest of
their identity instead.

Only tokens this server issued open a workspace (:func:`known_token`): an issued token carries an
HMAC of its random part under a key kept in ``home()`` (so issuing one writes nothing, and a script
opening fresh sessions mints no files), and a token whose workspace folder exists was issued before.
A link with any other token cannot plant its reader in a workspace the sender chose; it opens a new one.
The folder itself appears on the workspace's first write, within the server's cap on workspaces.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from engine.errors import UserError
from engine.workspace import home, read_json, valid_workspace_id, workspaces_dir, write_json_atomic

__all__ = ["new_token", "valid_token", "issue_token", "token_issued", "known_token", "workspace_for_token",
           "workspace_for_identity", "touch", "last_used", "list_workspaces", "remove_idle_workspaces",
           "protected_runs", "META_FILE"]

META_FILE = ".workspace.json"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")
_TOUCH_EVERY_S = 60.0
_KEY_FILE = ".workspace-token-key"
_RANDOM_CHARS, _SIGNATURE_CHARS = 32, 22  # 24 random bytes, 16 bytes of HMAC, both URL-safe base64


def new_token() -> str:
    """An unguessable URL-safe token (a share link's; a workspace's is :func:`issue_token`)."""
    return secrets.token_urlsafe(24)


def _token_key() -> bytes:
    """This server's key for workspace tokens, made once (readable by the server's user only)."""
    path = home() / _KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    tmp = path.with_name(f"{_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    try:
        os.link(tmp, path)  # only the first of two servers starting at once puts its key in place
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def _signature(random_part: str) -> str:
    mac = hmac.new(_token_key(), f"workspace:{random_part}".encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def issue_token() -> str:
    """A new visitor's workspace token: random, and signed by this server (nothing is written)."""
    random_part = secrets.token_urlsafe(24)
    return random_part + _signature(random_part)


def token_issued(token: str | None) -> bool:
    """Whether ``token`` carries this server's signature (:func:`issue_token`)."""
    text = str(token or "")
    if not valid_token(text) or len(text) != _RANDOM_CHARS + _SIGNATURE_CHARS:
        return False
    return hmac.compare_digest(_signature(text[:_RANDOM_CHARS]), text[_RANDOM_CHARS:])


def known_token(token: str | None) -> bool:
    """A token that may open its workspace: issued by this server, or one whose workspace exists already
    (used before; tokens from before signing)."""
    if not valid_token(token):
        return False
    return token_issued(token) or (workspaces_dir() / workspace_for_token(str(token))).is_dir()


def valid_token(token: str | None) -> bool:
    """A token from a URL or cookie: URL-safe characters of a sensible length, nothing else."""
    return bool(token) and _TOKEN.fullmatch(str(token)) is not None


def _digest(kind: str, text: str) -> str:
    return hashlib.sha256(f"{kind}:{text}".encode()).hexdigest()[:32]


def workspace_for_token(token: str) -> str:
    """The workspace id of a visitor token (raises ValueError for a malformed token)."""
    if not valid_token(token):
        raise ValueError("malformed workspace token")
    return _digest("token", token)


def workspace_for_identity(issuer: str | None, subject: str | None, email: str | None = None) -> str:
    """The workspace id of a logged-in identity: the login's issuer and subject, or its e-mail.

    An identity with neither would put every such visitor in one workspace: refused (UserError)."""
    who = str(subject or "").strip() or str(email or "").strip()
    if not who:
        raise UserError("your login gave this server neither an account id (sub) nor an e-mail, so it cannot "
                        "tell whose workspace to open; ask the operator to configure the login provider")
    return _digest("identity", f"{issuer or ''}|{who}")


def _folder(wid: str) -> Path:
    if not valid_workspace_id(wid):
        raise ValueError(f"not a workspace id: {wid!r}")
    return workspaces_dir() / wid


def touch(wid: str, now: float | None = None) -> None:
    """Record that ``wid`` was used (at most once a minute: a rerun is cheap). A workspace nothing was written
    to yet has no folder, and touching it creates none: a page view costs no disk."""
    now = time.time() if now is None else now
    if not _folder(wid).is_dir():
        return
    meta_file = _folder(wid) / META_FILE
    meta = read_json(meta_file, default={}) or {}
    if 0 <= now - float(meta.get("last_used", 0)) < _TOUCH_EVERY_S:
        return  # recorded a moment ago
    write_json_atomic(meta_file, {"created": meta.get("created", now), "last_used": now})


def last_used(wid: str) -> float:
    folder = _folder(wid)
    meta = read_json(folder / META_FILE, default={}) or {}
    if "last_used" in meta:
        return float(meta["last_used"])
    return folder.stat().st_mtime if folder.exists() else 0.0


def list_workspaces() -> list[str]:
    root = workspaces_dir()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and valid_workspace_id(p.name)) if root.is_dir() else []


def _active_run_dirs() -> set[str]:
    from engine.jobs.queue import list_jobs

    return {str(Path(j["run_dir"]).resolve()) for j in list_jobs() if j["state"] in ("queued", "running")}


def _is_active(run, active: set[str]) -> bool:
    return str(run.path.resolve()) in active or run.status().get("state") in ("queued", "running")


def protected_runs(wid: str) -> list[Path]:
    """Run folders of ``wid`` the clean-up must keep: shared, or queued/running (in the queue or by status)."""
    from engine.hosting.sharing import is_shared
    from engine.runs import Run

    runs = _folder(wid) / "runs"
    if not runs.is_dir():
        return []
    active = _active_run_dirs()
    return [path for path in runs.iterdir()
            if path.is_dir() and (is_shared(Run(path)) or _is_active(Run(path), active))]


def _needed_by(wid: str, kept: list[Path]) -> set[Path]:
    """What the kept runs of ``wid`` need besides their folders: each one's dataset when it lives in the
    workspace (an upload), and the caches when one of them is queued or running (its job reads them)."""
    from engine.runs import Run

    folder = _folder(wid).resolve()
    active = _active_run_dirs()
    needed: set[Path] = set()
    for path in kept:
        run = Run(path)
        try:
            dataset = Path(str(run.config().get("dataset") or "")).resolve()
        except Exception:  # an unreadable config: its run is kept whole, nothing more is known
            dataset = None
        if dataset is not None and dataset != folder and dataset.is_relative_to(folder):
            needed.add(dataset if dataset.is_dir() else dataset.parent)  # a table's images lie beside it
        if _is_active(run, active):
            needed.add(folder / "cache")
    return needed


def remove_idle_workspaces(now: float | None = None, ttl_days: float | None = None,
                           dry_run: bool = False) -> list[dict]:
    """Remove workspaces unused for ``ttl_days`` (default: the limit) with their files, except their shared
    and queued/running runs and what those need (their uploaded datasets; the caches of a queued or running
    one), which stay with the workspace folder around them. Each workspace is decided and cleaned under the
    queue's lock, so a run queued meanwhile is seen and kept. One dict per workspace touched: ``workspace``
    (short id), ``idle_days``, ``removed`` (whole workspace or not), ``kept`` runs."""
    from engine.jobs.queue import queue_lock
    from engine.settings.audit import audit
    from engine.settings.audit import short_id
    from engine.settings.limits import limits

    now = time.time() if now is None else now
    ttl_s = (limits().workspace_ttl_days if ttl_days is None else ttl_days) * 86400
    report = []
    for wid in list_workspaces():
        if now - last_used(wid) < ttl_s:
            continue
        with queue_lock():
            idle = now - last_used(wid)  # again, under the lock: a visitor may have come back meanwhile
            folder = _folder(wid)
            if idle < ttl_s or not folder.is_dir():
                continue
            keep = protected_runs(wid)
            needed = {p.resolve() for p in keep} | _needed_by(wid, keep)
            entry = {"workspace": short_id(wid), "idle_days": round(idle / 86400, 2), "removed": not keep,
                     "kept": sorted(p.name for p in keep)}
            report.append(entry)
            if dry_run:
                continue
            audit("ttl-remove", wid, idle_days=entry["idle_days"], kept_runs=len(keep))
            if not keep:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            _remove_all_but(folder, needed, keep_names=frozenset({META_FILE}))
    return report


def _remove_all_but(folder: Path, needed: set[Path], keep_names: frozenset[str] = frozenset()) -> None:
    """Remove everything under ``folder`` except the ``needed`` paths (and the folders on the way to them)."""
    for child in folder.iterdir():
        real = child.resolve()
        if child.name in keep_names or real in needed:
            continue
        if child.is_dir() and not child.is_symlink() and any(p.is_relative_to(real) for p in needed):
            _remove_all_but(child, needed)
        else:
            _remove(child)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
