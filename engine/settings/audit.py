"""Who did what, on the server's log: one line per event, the workspace as a short id (never a token).

``2026-05-01 12:00:00 transfer_studio workspace=3f9a01bc queue run=… backbone=mobilenet_v2 mode=linear``.
The training job's own log (``RUN_DIR/log.txt``) starts with the same short id.

Values can come from a visitor (a backbone name from the URL, a run label): a plain word is logged as it
is, anything else with ``repr``, so a newline or a space in a value can never forge a line or a field.
"""
from __future__ import annotations

import logging
import re
import sys

from engine.workspace import workspace_id

__all__ = ["audit", "configure_logging", "short_id", "log_value", "LOGGER"]

LOGGER = "transfer_studio"
_log = logging.getLogger(LOGGER)
# What is logged bare: a word of letters, digits and . _ : / + - (names, numbers, ids, paths without spaces).
_PLAIN = re.compile(r"[A-Za-z0-9._:/+-]{1,200}")
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")


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


def log_value(value) -> str:
    """``value`` as one unforgeable token of a log line: bare when plain, else its ``repr``."""
    text = str(value)
    return text if _PLAIN.fullmatch(text) else repr(text)


def audit(event: str, wid: str | None = None, **fields) -> None:
    """Log ``event`` for the current (or given) workspace with ``fields`` as key=value (values via
    :func:`log_value`; the event and keys are the code's own names, checked)."""
    if not _NAME.fullmatch(event) or not all(_NAME.fullmatch(k) for k in fields):
        raise ValueError(f"not an audit event or field name: {event!r} {list(fields)!r}")
    detail = " ".join(f"{k}={log_value(v)}" for k, v in fields.items())
    _log.info("workspace=%s %s%s", short_id(wid), event, f" {detail}" if detail else "")
