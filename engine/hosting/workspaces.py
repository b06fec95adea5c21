"""A visitor's workspace on the hosted profile: token -> workspace id, last use, idle clean-up (TTL).

A visitor holds an unguessable token (``secrets.token_urlsafe``), kept in the page URL
(``?ws=...``); the workspace folder is named by a digest of it, so neither the folder
nor a log line reveals the token, and the same token reopens the same workspace after a
refresh, a closed tab or a server restart. A logged-in visitor's workspace is a digest of
their identity instead.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import time
from pathlib import Path

from engine.workspace import read_json, valid_workspace_id, workspaces_dir, write_json_atomic

__all__ = ["new_token", "valid_token", "workspace_for_token", "workspace_for_identity", "touch", "last_used",
           "list_workspaces", "remove_idle_workspaces", "protected_runs", "META_FILE"]

META_FILE = ".workspace.json"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")
_TOUCH_EVERY_S = 60.0


def new_token() -> str:
    return secrets.token_urlsafe(24)


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


def workspace_for_identity(issuer: str, subject: str) -> str:
    """The workspace id of a logged-in identity (the login's issuer and subject, or its e-mail)."""
    return _digest("identity", f"{issuer}|{subject}")


def _folder(wid: str) -> Path:
    if not valid_workspace_id(wid):
        raise ValueError(f"not a workspace id: {wid!r}")
    return workspaces_dir() / wid


def touch(wid: str, now: float | None = None) -> None:
    """Record that ``wid`` was used (at most once a minute: a rerun is cheap)."""
    now = time.time() if now is None else now
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


def protected_runs(wid: str) -> list[Path]:
    """Run folders of ``wid`` the clean-up must keep: shared, or queued/running (in the queue or by status)."""
    from engine.hosting.sharing import is_shared
    from engine.runs import Run
    from engine.runs.jobs import list_jobs

    runs = _folder(wid) / "runs"
    if not runs.is_dir():
        return []
    active = {str(Path(j["run_dir"]).resolve()) for j in list_jobs() if j["state"] in ("queued", "running")}
    keep = []
    for path in runs.iterdir():
        run = Run(path)
        if not path.is_dir():
            continue
        if is_shared(run) or str(path.resolve()) in active or run.status().get("state") in ("queued", "running"):
            keep.append(path)
    return keep


def remove_idle_workspaces(now: float | None = None, ttl_days: float | None = None,
                           dry_run: bool = False) -> list[dict]:
    """Remove workspaces unused for ``ttl_days`` (default: the limit) with their files, except their shared
    and queued/running runs, which stay (with the workspace folder around them). One dict per workspace
    touched: ``workspace`` (short id), ``idle_days``, ``removed`` (whole workspace or not), ``kept`` runs."""
    from engine.settings.audit import audit
    from engine.settings.audit import short_id
    from engine.settings.limits import limits

    now = time.time() if now is None else now
    ttl_s = (limits().workspace_ttl_days if ttl_days is None else ttl_days) * 86400
    report = []
    for wid in list_workspaces():
        idle = now - last_used(wid)
        if idle < ttl_s:
            continue
        folder = _folder(wid)
        keep = protected_runs(wid)
        entry = {"workspace": short_id(wid), "idle_days": round(idle / 86400, 2), "removed": not keep,
                 "kept": [p.name for p in keep]}
        report.append(entry)
        if dry_run:
            continue
        audit("ttl-remove", wid, idle_days=entry["idle_days"], kept_runs=len(keep))
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        kept = {p.resolve() for p in keep}
        for child in folder.iterdir():
            if child.name == "runs":
                for run in child.iterdir():
                    if run.resolve() not in kept:
                        _remove(run)
            elif child.name != META_FILE:
                _remove(child)
    return report


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
