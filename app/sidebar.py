"""The sidebar's workspace panel on the hosted profile: the link that reopens it, its disk use, the limits."""
from __future__ import annotations

import streamlit as st

from engine.settings.audit import short_id
from engine.settings.limits import limit_rows, limits, workspace_usage_bytes
from engine.settings.profile import hosted
from engine.hosting.sharing import app_link
from engine.workspace import workspace_id
from app.state import WORKSPACE_PARAM, open_new_workspace, workspace_token

__all__ = ["workspace_panel"]


@st.cache_data(ttl=60, max_entries=256, show_spinner=False)
def _usage_mb(wid: str) -> float:
    return workspace_usage_bytes() / 1024**2


def workspace_panel() -> None:
    if not hosted():
        return
    wid = workspace_id()
    if wid is None:
        return
    with st.expander("Your workspace", icon=":material/person:"):
        token = workspace_token()
        if token:
            st.caption("Bookmark this page: its address reopens your workspace after a refresh, a closed tab or "
                       "a server restart. Anyone holding it can see your workspace, so keep it to yourself.")
            st.code(app_link(st.context.url, WORKSPACE_PARAM, token), language=None)
            st.button("Open a new, empty workspace", key="new_workspace", on_click=open_new_workspace,
                      help="If someone sent you the link you opened, they can see this workspace: start your own.")
        cap = limits()
        used = _usage_mb(wid)
        st.progress(min(1.0, used / cap.disk_quota_mb),
                    text=f"{used:,.0f} of {cap.disk_quota_mb:,.0f} MB used")
        st.caption(f"Workspace `{short_id(wid)}` · removed after {cap.workspace_ttl_days:g} days without use "
                   "(shared runs stay)")
        st.dataframe([{"limit": r["help"].split(";")[0], "value": r["now"]} for r in limit_rows(cap)],
                     hide_index=True, width="stretch")
