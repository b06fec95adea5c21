"""Optional access control for a hosted install: a shared password, or a login identity's workspace.

The password comes from ``$TS_PASSWORD`` or, in ``.streamlit/secrets.toml``, ``password`` under
``[access]`` (the app passes its secrets in). Login is Streamlit's OIDC (``st.login``), switched on by
an ``[auth]`` table in the same secrets file; the app then ties the workspace to the identity
(:func:`engine.hosting.workspaces.workspace_for_identity`).

Password guesses are counted and slowed (:class:`PasswordGuard`): each browser session may try
``password_attempts`` wrong ones, waiting ``password_delay_s`` (doubling) between them, and the whole
server takes ``password_attempts_server`` wrong ones per 15 minutes (a script opening fresh sessions
gets a fresh per-session count, not a fresh server count) before the form pauses for everyone.
"""
from __future__ import annotations

import hmac
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, MutableMapping

from engine.errors import UserError

__all__ = ["PASSWORD_ENV", "configured_password", "password_ok", "login_configured", "PasswordGuard",
           "PASSWORD_GUARD", "SERVER_WINDOW_S", "open_server_warning"]

SERVER_WINDOW_S = 15 * 60.0

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


def open_server_warning(secrets: Mapping | None = None) -> str | None:
    """The warning for the server's log when it is hosted with neither a password nor a login, else None."""
    from engine.settings.profile import hosted

    if not hosted() or configured_password(secrets) is not None or login_configured(secrets):
        return None
    return ("WARNING: TS_PROFILE=hosted with neither TS_PASSWORD nor a login ([access] or [auth] in "
            ".streamlit/secrets.toml): this is an open server; anyone who reaches it can upload, train and use "
            "its disk and CPU/GPU within the limits")


class PasswordGuard:
    """Counts and slows wrong passwords, per session (a dict the caller keeps, e.g. in its session state)
    and server-wide (this object, one per server process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server_failures: deque[float] = deque()

    def _recent(self, now: float) -> tuple[int, float]:
        """Wrong passwords on the server in the window, and when the oldest of them was."""
        with self._lock:
            while self._server_failures and now - self._server_failures[0] > SERVER_WINDOW_S:
                self._server_failures.popleft()
            return len(self._server_failures), (self._server_failures[0] if self._server_failures else now)

    def check(self, session: MutableMapping, now: float | None = None) -> None:
        """Raise UserError when this session (or the server) may not try a password now."""
        from engine.settings.limits import limits

        now = time.time() if now is None else now
        cap = limits()
        failures = int(session.get("failures", 0))
        if failures >= cap.password_attempts:
            raise UserError(f"{failures} wrong passwords in this session, the most allowed "
                            "(TS_PASSWORD_ATTEMPTS); ask the operator of this server for the password")
        wait = float(session.get("next_try_at", 0.0)) - now
        if wait > 0:
            raise UserError(f"wrong password; wait {wait:.0f} s before the next try")
        recent, oldest = self._recent(now)
        if recent >= cap.password_attempts_server:
            minutes = max(1, round((oldest + SERVER_WINDOW_S - now) / 60))
            raise UserError(f"this server has had {recent} wrong passwords in the last 15 minutes "
                            f"(TS_PASSWORD_ATTEMPTS_SERVER); the password form opens again in about {minutes} min")

    def attempt(self, session: MutableMapping, given: str | None, expected: str, now: float | None = None) -> bool:
        """Check, then compare ``given``; a wrong one is counted (session and server) and delays the next try."""
        from engine.settings.audit import audit
        from engine.settings.limits import limits

        now = time.time() if now is None else now
        self.check(session, now)
        if password_ok(given, expected):
            session["failures"] = 0
            return True
        failures = int(session.get("failures", 0)) + 1
        session["failures"] = failures
        session["next_try_at"] = now + limits().password_delay_s * 2 ** (failures - 1)
        with self._lock:
            self._server_failures.append(now)
        audit("password-wrong", session_failures=failures, server_failures_15min=self._recent(now)[0])
        return False


PASSWORD_GUARD = PasswordGuard()
