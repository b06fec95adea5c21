"""The optional gate in front of every page (never in front of a shared link's demo).

Off unless an operator configures it: OIDC login (an ``[auth]`` table in ``.streamlit/secrets.toml``,
Streamlit's ``st.login``) or a shared password (``$TS_PASSWORD`` or ``password`` under ``[access]``).
"""
from __future__ import annotations

import streamlit as st
from streamlit import config as st_config

from engine.errors import UserError
from engine.hosting.access import PASSWORD_GUARD, configured_password, login_configured
from engine.settings.profile import hosted
from app.state import app_secrets

__all__ = ["require_access", "apply_error_policy"]

_OK_KEY, _GUESSES_KEY = "_ts_access_ok", "_ts_password_guesses"
# What this process was configured with (config.toml, flags), for the local profile.
_CONFIGURED_ERROR_DETAILS = st_config.get_option("client.showErrorDetails")


def apply_error_policy() -> None:
    """Hosted: an unexpected error shows visitors no message, type or traceback (server paths), only
    Streamlit's generic notice; the details stay in the server's log. Local: as configured."""
    st.set_option("client.showErrorDetails", "none" if hosted() else _CONFIGURED_ERROR_DETAILS)


def require_access() -> None:
    """Return when the visitor may go on; otherwise draw the login or password form and stop the script."""
    secrets = app_secrets()
    if login_configured(secrets):
        if not st.user.is_logged_in:
            st.title("Transfer Studio")
            st.caption("This server asks you to log in; your workspace is tied to your account.")
            st.button("Log in", on_click=st.login, type="primary")
            st.stop()
        with st.sidebar:
            st.button("Log out", on_click=st.logout, key="logout")
        return
    password = configured_password(secrets)
    if password is None or st.session_state.get(_OK_KEY):
        return
    st.title("Transfer Studio")
    given = st.text_input("Password", type="password", key="access_password",
                          help="This server is shared by invitation; its operator gives out the password.")
    guesses = st.session_state.setdefault(_GUESSES_KEY, {})
    if given:
        try:
            right = PASSWORD_GUARD.attempt(guesses, given, password)
        except UserError as exc:  # too many, or too soon after the last wrong one
            st.error(str(exc))
            st.stop()
        if right:
            st.session_state[_OK_KEY] = True
            st.rerun()
        st.error("That password is not right; ask the operator of this server for it.")
    st.stop()
