"""Read-only share links to one run: its results and its model demo, nothing else of the workspace.

Sharing is explicit: :func:`share_run` draws an unguessable token and records it twice, in the
run (``RUN_DIR/share.json``, so its owner sees the link again and the clean-up keeps the run)
and in the server's registry (``home()/shares/<digest of token>.json`` -> the run directory).
:func:`shared_run` opens the run only when both agree, so :func:`unshare_run` withdraws a link.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from urllib.parse import urlsplit

from engine.errors import UserError
from engine.settings.audit import audit
from engine.hosting.workspaces import new_token, valid_token
from engine.runs import Run
from engine.workspace import home, read_json, workspace_of, write_json_atomic

__all__ = ["share_run", "unshare_run", "share_token", "is_shared", "shared_run", "share_url", "app_link",
           "SHARE_PARAM", "SHARE_FILE"]

SHARE_PARAM = "share"
SHARE_FILE = "share.json"


def _registry(token: str) -> Path:
    return home() / "shares" / f"{hashlib.sha256(f'share:{token}'.encode()).hexdigest()}.json"


def share_token(run: Run) -> str | None:
    """The run's share token when it is shared, else None."""
    token = (read_json(run.path / SHARE_FILE, default={}) or {}).get("token")
    return token if valid_token(token) else None


def is_shared(run: Run) -> bool:
    return share_token(run) is not None


def share_run(run: Run) -> str:
    """Share ``run`` read-only (its exported model is what the demo runs); the same token when already shared."""
    if not run.exists():
        raise UserError(f"'{run.id}' is not a run")
    if not run.onnx_file.is_file():
        raise UserError(f"run '{run.id}' has no exported model yet; a shared demo needs one: export it first")
    token = share_token(run)
    if token is None:
        token = new_token()
        write_json_atomic(run.path / SHARE_FILE, {"token": token, "created": time.time()})
    write_json_atomic(_registry(token), {"run_dir": str(run.path.resolve()), "workspace": workspace_of(run.path),
                                         "created": time.time()})
    audit("share", workspace_of(run.path), run=run.id)
    return token


def unshare_run(run: Run) -> None:
    """Withdraw the run's share link (the link stops working at once)."""
    token = share_token(run)
    (run.path / SHARE_FILE).unlink(missing_ok=True)
    if token is not None:
        _registry(token).unlink(missing_ok=True)
        audit("unshare", workspace_of(run.path), run=run.id)


def shared_run(token: str | None) -> Run:
    """The run a share link opens, or a UserError; the token is checked strictly before any file is read."""
    invalid = UserError("this share link is not valid or was withdrawn; ask its owner for a new one")
    if not valid_token(token):
        raise invalid
    entry = read_json(_registry(str(token)))
    if not isinstance(entry, dict) or "run_dir" not in entry:
        raise invalid
    run = Run(entry["run_dir"])
    held = share_token(run) if run.exists() else None
    if held is None or not hmac.compare_digest(held, str(token)):
        raise invalid
    return run


def app_link(page_url: str | None, param: str, token: str) -> str:
    """A link into this app with one query parameter: the app's address (from the page's URL, its path and
    query dropped; a relative link when unknown) + ``?param=token``."""
    parts = urlsplit(page_url if isinstance(page_url, str) else "")
    base = f"{parts.scheme}://{parts.netloc}/" if parts.scheme and parts.netloc else "/"
    return f"{base}?{param}={token}"


def share_url(token: str, page_url: str | None) -> str:
    """The link to hand out for a shared run."""
    return app_link(page_url, SHARE_PARAM, token)
