"""The deployment profile: ``local`` (one workspace, the default) or ``hosted`` (``TS_PROFILE=hosted``)."""
from __future__ import annotations

import os

from engine.errors import UserError

__all__ = ["PROFILE_ENV", "PROFILES", "profile", "hosted", "require_operator"]

PROFILE_ENV = "TS_PROFILE"
PROFILES = ("local", "hosted")


def profile() -> str:
    name = (os.environ.get(PROFILE_ENV) or "local").strip().lower()
    if name not in PROFILES:
        raise UserError(f"{PROFILE_ENV}={name!r} is not a profile; use one of: {', '.join(PROFILES)}")
    return name


def hosted() -> bool:
    """Each visitor gets a workspace of their own and the hosted limits apply."""
    return profile() == "hosted"


def require_operator(what: str) -> None:
    """Hosted: a change to what every workspace shares (``what``) is the operator's (the CLI, no visitor
    workspace), never a visitor's; raises UserError for a visitor."""
    from engine.workspace import workspace_id

    if hosted() and workspace_id() is not None:
        raise UserError(f"on this shared server only its operator can {what} (python -m engine on the server); "
                        "ask them")
