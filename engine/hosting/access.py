"""Optional access control for a hosted install: a shared password, or a login identity's workspace.

The password comes from ``$TS_PASSWORD`` or, in ``.streamlit/secrets.toml``, ``password`` under
``[access]`` (the app passes its secrets in). Login is Streamlit's OIDC (``st.login``), switched on by
an ``[auth]`` table in the same secrets file; the app then ties the workspace to the identity
(:func:`engine.hosting.workspaces.workspace_for_identity`).
"""
from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

__all__ = ["PASSWORD_ENV", "configured_password", "password_ok", "login_configured"]

PASSWORD_ENV = "TS_PASSWORD"


def configured_password(secrets: Mapping | None = None) -> str | None:
    """The shared password, or None when the install has none (local use)."""
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    access = (secrets or {}).get("access") or {}
    value = access.get("password") if isinstance(access, Mapping) else None
    return str(value) if value else None


def password_ok(given: str | None, expected: str) -> bool:
    """Constant-time comparison of what the visitor typed with the shared password."""
    return hmac.compare_digest(str(given or "").encode(), expected.encode())


def login_configured(secrets: Mapping | None = None) -> bool:
    """Whether ``[auth]`` is configured in the secrets (OIDC login via ``st.login``)."""
    auth = (secrets or {}).get("auth")
    return isinstance(auth, Mapping) and bool(auth)
