"""The health check an operator (or a load balancer's probe script) runs: ``python -m engine health``.

Streamlit itself answers ``GET /_stcore/health`` with ``ok`` while the server is up; this checks what
the app needs beyond that: the profile and limits parse, the server root and the current workspace are
writable, the job queue is readable, and the disk has room.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from engine.errors import UserError

__all__ = ["health_report", "startup_refusal"]

_MIN_FREE_MB = 500


def _check(name: str, fn) -> dict:
    try:
        detail = fn()
        return {"check": name, "ok": True, "detail": detail}
    except (UserError, OSError, Exception) as exc:  # a health check reports, never raises
        return {"check": name, "ok": False, "detail": f"{type(exc).__name__}: {exc}"}


def _writable(path_fn):
    def probe() -> str:
        root = path_fn()
        with tempfile.NamedTemporaryFile(dir=root, prefix=".health-"):
            pass
        return str(root)
    return probe


def _queue() -> str:
    from engine.jobs.queue import list_jobs

    jobs = list_jobs()
    active = sum(j["state"] in ("queued", "running") for j in jobs)
    return f"{active} job(s) queued or running, {len(jobs)} recorded"


def _disk() -> str:
    from engine.workspace import home

    free_mb = shutil.disk_usage(home()).free / 1024**2
    if free_mb < _MIN_FREE_MB:
        raise OSError(f"only {free_mb:,.0f} MB free under {home()}")
    return f"{free_mb:,.0f} MB free"


def _data_roots() -> str:
    from engine.data.ingest import data_roots

    roots = data_roots()  # refuses a root that overlaps the server's own folder
    return f"{len(roots)} server data root(s)" if roots else "no server data roots (TS_DATA_ROOTS unset)"


def _settings_checks() -> list[dict]:
    """The checks of what the operator configured: a failure here is a server that must not start."""
    from engine.settings.limits import limits
    from engine.settings.profile import profile

    return [_check("profile", profile),
            _check("limits", lambda: f"{len(vars(limits()))} limits valid"),
            _check("data roots", _data_roots)]


def startup_refusal() -> str | None:
    """One line when the server's configuration is unsafe or invalid (for the app to show instead of any page,
    at start rather than on the first visitor's read), else None."""
    failed = [c for c in _settings_checks() if not c["ok"]]
    if not failed:
        return None
    return "The server is misconfigured and will not serve pages: " + "; ".join(
        f"{c['check']}: {c['detail'].split(': ', 1)[-1]}" for c in failed)


def health_report() -> dict:
    """``ok`` (all checks passed) and one entry per check."""
    from engine.workspace import home, workspace_root

    checks = [
        *_settings_checks(),
        _check("server root writable", _writable(home)),
        _check("workspace writable", _writable(workspace_root)),
        _check("job queue readable", _queue),
        _check("free disk", _disk),
    ]
    return {"ok": all(c["ok"] for c in checks), "pid": os.getpid(), "checks": checks}
