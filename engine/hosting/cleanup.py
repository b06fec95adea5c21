"""The idle-workspace clean-up (TTL) of the hosted profile: what a workspace unused for ``workspace_ttl_days``
loses, and what it keeps (its shared runs, its queued or running ones, and what those need).

Above :mod:`engine.hosting.workspaces` (ids, folders, last use) and :mod:`engine.hosting.sharing` (which runs
are shared), which it reads; neither needs it.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from engine.hosting.sharing import is_shared
from engine.hosting.workspaces import META_FILE, last_used, list_workspaces, workspace_folder
from engine.jobs.queue import list_jobs, queue_lock
from engine.runs import Run
from engine.settings.audit import audit, short_id
from engine.settings.limits import limits

__all__ = ["protected_runs", "remove_idle_workspaces"]


def _active_run_dirs() -> set[str]:
    return {str(Path(j["run_dir"]).resolve()) for j in list_jobs() if j["state"] in ("queued", "running")}


def _is_active(run, active: set[str]) -> bool:
    return str(run.path.resolve()) in active or run.status().get("state") in ("queued", "running")


def protected_runs(wid: str) -> list[Path]:
    """Run folders of ``wid`` the clean-up must keep: shared, or queued/running (in the queue or by status)."""
    runs = workspace_folder(wid) / "runs"
    if not runs.is_dir():
        return []
    active = _active_run_dirs()
    return [path for path in runs.iterdir()
            if path.is_dir() and (is_shared(Run(path)) or _is_active(Run(path), active))]


def _needed_by(wid: str, kept: list[Path]) -> set[Path]:
    """What the kept runs of ``wid`` need besides their folders: each one's dataset when it lives in the
    workspace (an upload), and the caches when one of them is queued or running (its job reads them)."""
    folder = workspace_folder(wid).resolve()
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
    now = time.time() if now is None else now
    ttl_s = (limits().workspace_ttl_days if ttl_days is None else ttl_days) * 86400
    report = []
    for wid in list_workspaces():
        if now - last_used(wid) < ttl_s:
            continue
        with queue_lock():
            idle = now - last_used(wid)  # again, under the lock: a visitor may have come back meanwhile
            folder = workspace_folder(wid)
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
