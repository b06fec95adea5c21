"""State shared by every page: the visitor's workspace, the current dataset, backbone and run.

Each lives in ``st.session_state`` and is mirrored in ``st.query_params`` so a
refresh or a shared link reopens the same dataset and run. On the hosted profile
the frame calls :func:`select_workspace` first: the visitor's token (``?ws=``) or
login identity picks their workspace, and every engine path of this session
(``engine.workspace.workspace_root``) resolves inside it, fragments included.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from engine.data.builtin import DEFAULT_DATASET
from engine.hosting.access import login_configured
from engine.settings.audit import audit
from engine.settings.profile import hosted
from engine.hosting.sharing import SHARE_PARAM
from engine.errors import UserError
from engine.jobs.view import DEFAULT_BACKBONE
from engine.hosting.workspaces import (issue_token, known_token, touch, valid_token, workspace_for_identity,
                                       workspace_for_token)
from engine.runs import Run
from engine.workspace import runs_dir, set_workspace_resolver

__all__ = ["current_dataset", "set_dataset", "current_backbone", "set_backbone", "current_run", "set_run",
           "pick_run", "DEFAULT_BACKBONE", "select_workspace", "workspace_token", "share_param", "app_secrets",
           "WORKSPACE_PARAM", "WORKSPACE_COOKIE", "require_frame", "open_new_workspace"]

WORKSPACE_PARAM = "ws"
# A proxy in front of the app may keep the token in this cookie (Streamlit itself sets no cookies).
WORKSPACE_COOKIE = "ts_workspace"
_WS_KEY, _TOKEN_KEY = "_ts_workspace", "_ts_token"


def _session_workspace() -> str | None:
    """The workspace id of the session whose script (or fragment) runs in this thread, if any.

    Only on the hosted profile: the local profile has one workspace, whatever a session (or a
    script-run context left on a thread, as AppTest leaves one) holds."""
    if not hosted() or get_script_run_ctx(suppress_warning=True) is None:
        return None
    return st.session_state.get(_WS_KEY)


set_workspace_resolver(_session_workspace)


def require_frame() -> None:
    """Every page calls this first: a page file run without the frame is rerun through it.

    Until the frame's ``st.navigation`` has run once in a server process, Streamlit treats ``pages/`` as a
    legacy multipage folder: a deep link (``/train?run=…``) that is the first request after a (re)start
    (or arrives alongside it) runs ``pages/train.py`` alone, without the access gate, the visitor's
    workspace or queue recovery. That legacy navigation lists the main script itself as a page, which the
    frame's never does; then legacy mode is turned off and the rerun runs the frame, which opens the page.
    """
    from streamlit.runtime.pages_manager import PagesManager

    from streamlit.runtime import Runtime

    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None or not Runtime.exists() or type(Runtime.instance()) is not Runtime:
        return  # AppTest (a stand-in runtime, no server) switches pages its own way
    pages = ctx.pages_manager.get_pages()
    main = Path(ctx.pages_manager.main_script_path).resolve()
    if len(pages) > 1 and any(p.get("script_path") and Path(p["script_path"]).resolve() == main
                              for p in pages.values()):
        PagesManager.uses_pages_directory = False
        st.rerun()


def app_secrets() -> dict:
    """``.streamlit/secrets.toml`` as a dict ({} when there is none)."""
    try:
        return st.secrets.to_dict()
    except Exception:  # no secrets file: nothing configured
        return {}


def share_param() -> str | None:
    """The share token of a shared link (``?share=``), unchecked; the demo page checks it."""
    return st.query_params.get(SHARE_PARAM)


def select_workspace() -> str | None:
    """Hosted profile: this session's workspace id (created on first visit), also kept in the URL.

    The token comes from this session, the URL (``?ws=``, only one this server issued: a link cannot plant
    its reader in a workspace its sender chose) or a proxy's cookie; a logged-in visitor's workspace is their
    identity's (one with neither subject nor e-mail is refused). Local profile: None (the one workspace).
    Nothing is written here: the workspace's folder appears on its first upload, run or task.
    """
    if not hosted():
        return None
    if login_configured(app_secrets()) and st.user.is_logged_in:
        try:
            wid = workspace_for_identity(st.user.get("iss"), st.user.get("sub"), st.user.get("email"))
        except UserError as exc:
            st.error(str(exc))
            st.stop()
    else:
        token = st.session_state.get(_TOKEN_KEY)  # this session's own, checked when it was chosen
        if token is None:
            offered, cookie = st.query_params.get(WORKSPACE_PARAM), st.context.cookies.get(WORKSPACE_COOKIE)
            if known_token(offered):
                token = offered
            elif isinstance(cookie, str) and valid_token(cookie):
                token = cookie  # the operator's proxy keeps it; a link cannot set a cookie
            else:
                if offered:
                    st.warning("That workspace link is not one this server gave out (or it is not valid), so a "
                               "new, empty workspace was opened for you. Bookmark this page's new address to "
                               "come back to it.")
                token = issue_token()
                audit("new-workspace", workspace_for_token(token))
        st.session_state[_TOKEN_KEY] = token
        if st.query_params.get(WORKSPACE_PARAM) != token:
            st.query_params[WORKSPACE_PARAM] = token
        wid = workspace_for_token(str(token))
    st.session_state[_WS_KEY] = wid
    touch(wid)
    return wid


def open_new_workspace() -> None:
    """Leave this workspace for a new, empty one (hosted, without login): a visitor who opened a link someone
    else sent (who can see that workspace too) starts afresh. Nothing is written until its first upload."""
    token = issue_token()
    st.session_state[_TOKEN_KEY] = token
    st.session_state[_WS_KEY] = workspace_for_token(token)
    st.query_params[WORKSPACE_PARAM] = token
    for key in ("dataset", "run"):  # the old workspace's upload and run mean nothing in the new one
        st.session_state.pop(key, None)
        st.query_params.pop(key, None)
    audit("new-workspace", workspace_for_token(token))


def workspace_token() -> str | None:
    """The visitor's workspace token (hosted, without login), for the link that reopens the workspace."""
    return st.session_state.get(_TOKEN_KEY)

_DEFAULTS = {"dataset": DEFAULT_DATASET, "backbone": DEFAULT_BACKBONE, "run": None}


def _get(key: str):
    if key not in st.session_state:
        st.session_state[key] = st.query_params.get(key, _DEFAULTS[key])
    return st.session_state[key]


def _set(key: str, value) -> None:
    st.session_state[key] = value
    if value is None:
        st.query_params.pop(key, None)
    else:
        st.query_params[key] = str(value)


def current_dataset() -> str:
    """Built-in dataset name or the folder of an uploaded/extracted dataset.

    The value can come from the URL (?dataset=...), so it is checked with
    engine.data.ingest.validate_spec: only built-ins, uploads in the workspace
    and folders under the operator's TS_DATA_ROOTS; anything else falls back
    to the default dataset with a warning.
    """
    from engine.data.ingest import validate_spec
    from engine.errors import UserError

    spec = _get("dataset")
    try:
        valid = validate_spec(spec)
    except UserError as exc:
        st.warning(f"{exc}. Showing {DEFAULT_DATASET} instead.")
        _set("dataset", DEFAULT_DATASET)
        return DEFAULT_DATASET
    if valid != spec:
        _set("dataset", valid)
    return valid


def set_dataset(spec: str) -> None:
    _set("dataset", spec)


def current_backbone() -> str:
    """The backbone name, checked against the registry (it can come from the URL, ``?backbone=``)."""
    from engine.errors import UserError
    from engine.models import valid_backbone

    name = _get("backbone")
    try:
        valid_backbone(name)
    except UserError:
        st.warning(f"{str(name)[:40]!r} is not a known backbone. Showing {DEFAULT_BACKBONE} instead.")
        _set("backbone", DEFAULT_BACKBONE)
        return DEFAULT_BACKBONE
    return name


def set_backbone(name: str) -> None:
    _set("backbone", name)


def current_run() -> Run | None:
    run_id = _get("run")
    # The id comes from the URL: never let it name a folder outside runs/.
    if not run_id or not all(c.isalnum() or c in "-_" for c in str(run_id)):
        return None
    run = Run(runs_dir() / str(run_id))
    return run if run.exists() else None


def set_run(run: Run | None) -> None:
    _set("run", run.id if run else None)


def pick_run(label: str, runs: list[Run], key: str, on_pick=None) -> Run:
    """A selectbox of ``runs`` that opens on the current run and makes the picked one current."""
    from engine.jobs.view import run_label

    by_id = {run.id: run for run in runs}
    current = current_run()
    if st.session_state.get(key) not in by_id:
        st.session_state[key] = current.id if current is not None and current.id in by_id else runs[0].id

    def _picked() -> None:
        set_run(by_id[st.session_state[key]])
        if on_pick is not None:
            on_pick()

    st.selectbox(label, list(by_id), key=key, on_change=_picked, format_func=lambda rid: run_label(by_id[rid]))
    return by_id[st.session_state[key]]
