"""Who did what, on the server's log: one line per event, the workspace as a short id (never a token).

``2026-05-01 12:00:00 transfer_studio workspace=3f9a01bc queue run=… backbone=mobilenet_v2 mode=linear``.
The training job's own log (``RUN_DIR/log.txt``) starts with the same short id.
"""
from __future__ import annotations

import logging
import sys

from engine.workspace import workspace_id

__all__ = ["audit", "configure_logging", "short_id", "LOGGER"]

LOGGER = "transfer_studio"
_log = logging.getLogger(LOGGER)


def configure_logging() -> None:
    """Send these lines to stderr (the server's log) at INFO, once per process."""
    if not any(getattr(h, "_transfer_studio", False) for h in _log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        handler._transfer_studio = True  # type: ignore[attr-defined]
        _log.addHandler(handler)
    _log.setLevel(logging.INFO)


def short_id(wid: str | None = None) -> str:
    """The current (or given) workspace as it appears in logs: 8 hex characters of its id, never a token."""
    wid = wid if wid is not None else workspace_id()
    return wid[:8] if wid else "local"


def audit(event: str, wid: str | None = None, **fields) -> None:
    """Log ``event`` for the current (or given) workspace with ``fields`` as key=value."""
    detail = " ".join(f"{k}={v}" for k, v in fields.items())
    _log.info("workspace=%s %s%s", short_id(wid), event, f" {detail}" if detail else "")
