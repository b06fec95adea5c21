"""The optional gate in front of every page (never in front of a shared link's demo).

Off unless an operator configures it: OIDC login (an ``[auth]`` table in ``.streamlit/secrets.toml``,
Streamlit's ``st.login``) or a shared password (``$TS_PASSWORD`` or ``password`` under ``[access]``).
"""
from __future__ import annotations

import streamlit as st

from engine.hosting.access import configured_password, login_configured, password_ok
from app.state import app_secrets

__all__ = ["require_access"]

_OK_KEY = "_ts_access_ok"


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
    if given:
        if password_ok(given, password):
            st.session_state[_OK_KEY] = True
            st.rerun()
        st.error("That password is not right; ask the operator of this server for it.")
    st.stop()
