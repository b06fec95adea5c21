"""A Streamlit race that lost sidebar clicks, mended where it happens: a polling fragment's timer from the
page the visitor just left.

What happens (Streamlit 1.67, ``streamlit/runtime/scriptrunner_utils/script_requests.py``): a sidebar
click sends a full rerun for page B; the server starts a new script runner whose request is still
pending. The old page A's ``st.fragment(run_every=...)`` timer fires in the browser before it has drawn
B and sends a fragment rerun that names page A. ``_request_rerun_locked`` folds the two into one full
rerun and keeps the *newer* request's ``page_script_hash``: page A runs again and the click is lost. The
load bench caught it on the Train page (2 of 8 sessions in one ``make bench-load``, "at /train, script
notRunning, drawn after a second click").

The mend: a fragment's *timer* rerun (``is_auto_rerun``) naming another page than the run pending or in
progress belongs to a page the visitor left; it is accepted and dropped. Everything else goes through
unchanged, including timer reruns of the page being shown.
"""
from __future__ import annotations

from streamlit.runtime.scriptrunner_utils import script_requests as _requests

__all__ = ["install", "is_stale_fragment_timer"]

_MARK = "_transfer_studio_drops_stale_fragment_timers"


def is_stale_fragment_timer(current, new) -> bool:
    """Whether ``new`` is a fragment's timer rerun of another page than ``current`` (both ``RerunData``)."""
    return bool(new.fragment_id and new.is_auto_rerun and current.page_script_hash and new.page_script_hash
                and new.page_script_hash != current.page_script_hash)


def install() -> bool:
    """Wrap ``ScriptRequests._request_rerun_locked`` once per process; False where this Streamlit has no such
    method (a newer one: ``tests/test_stale_fragment_reruns.py`` then fails, so the mend is looked at again)."""
    cls = _requests.ScriptRequests
    original = getattr(cls, "_request_rerun_locked", None)
    if original is None:
        return False
    if getattr(original, _MARK, False):
        return True

    def request_rerun_locked(self, new_data):
        if self._state != _requests.ScriptRequestType.STOP and is_stale_fragment_timer(self._rerun_data, new_data):
            return True  # taken, and dropped: the page it would redraw is gone
        return original(self, new_data)

    setattr(request_rerun_locked, _MARK, True)
    request_rerun_locked.__wrapped__ = original  # type: ignore[attr-defined]
    cls._request_rerun_locked = request_rerun_locked
    return True
