"""The deployment profile: ``local`` (one workspace, the default) or ``hosted`` (``TS_PROFILE=hosted``)."""
from __future__ import annotations

import os

from engine.errors import UserError

__all__ = ["PROFILE_ENV", "PROFILES", "profile", "hosted"]

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
