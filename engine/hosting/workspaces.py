"""A visitor's workspace on the hosted profile: token -> workspace id, last use.

The idle clean-up (TTL) is :mod:`engine.hosting.cleanup`.

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
import time
from pathlib import Path

from engine.errors import UserError
from engine.workspace import home, read_json, valid_workspace_id, workspaces_dir, write_json_atomic

__all__ = ["new_token", "valid_token", "issue_token", "token_issued", "known_token", "workspace_for_token",
           "workspace_for_identity", "workspace_folder", "touch", "last_used", "list_workspaces", "META_FILE"]

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


def workspace_folder(wid: str) -> Path:
    """The folder of workspace ``wid`` (ValueError for a malformed id); it may not exist yet."""
    if not valid_workspace_id(wid):
        raise ValueError(f"not a workspace id: {wid!r}")
    return workspaces_dir() / wid


def touch(wid: str, now: float | None = None) -> None:
    """Record that ``wid`` was used (at most once a minute: a rerun is cheap). A workspace nothing was written
    to yet has no folder, and touching it creates none: a page view costs no disk."""
    now = time.time() if now is None else now
    if not workspace_folder(wid).is_dir():
        return
    meta_file = workspace_folder(wid) / META_FILE
    meta = read_json(meta_file, default={}) or {}
    if 0 <= now - float(meta.get("last_used", 0)) < _TOUCH_EVERY_S:
        return  # recorded a moment ago
    write_json_atomic(meta_file, {"created": meta.get("created", now), "last_used": now})


def last_used(wid: str) -> float:
    folder = workspace_folder(wid)
    meta = read_json(folder / META_FILE, default={}) or {}
    if "last_used" in meta:
        return float(meta["last_used"])
    return folder.stat().st_mtime if folder.exists() else 0.0


def list_workspaces() -> list[str]:
    root = workspaces_dir()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and valid_workspace_id(p.name)) if root.is_dir() else []
