"""A polling fragment's timer from the page a visitor just left must not undo the sidebar click.

Streamlit's real request queue (``ScriptRequests``), fed the two requests in the order the load bench caught:
the click to page B, then page A's fragment timer (see app/stale_fragment_reruns.py).
"""
from __future__ import annotations

from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequests, ScriptRequestType

from app.stale_fragment_reruns import install

CLICK_TO_RUNS = RerunData(page_script_hash="runs-hash", page_name="runs")
TRAIN_TIMER = RerunData(page_script_hash="train-hash", page_name="train", fragment_id="live", is_auto_rerun=True)


def _pending(requests: ScriptRequests) -> RerunData:
    request = requests.on_scriptrunner_ready()
    assert request.type == ScriptRequestType.RERUN
    return request.rerun_data


def test_this_streamlit_still_lets_the_old_pages_timer_take_the_click():
    # Unmended, the later request's page wins: the visitor stays on the Train page. When a Streamlit release
    # fixes this, this test fails and the mend can go.
    assert install()
    original = ScriptRequests._request_rerun_locked.__wrapped__
    requests = ScriptRequests()
    for data in (CLICK_TO_RUNS, TRAIN_TIMER):
        with requests._lock:
            assert original(requests, data)
    assert _pending(requests).page_script_hash == "train-hash"


def test_the_old_pages_timer_is_dropped_while_the_click_is_pending_or_running():
    assert install() and install()  # once per process, however often the app script runs
    requests = ScriptRequests()
    assert requests.request_rerun(CLICK_TO_RUNS)
    assert requests.request_rerun(TRAIN_TIMER)  # taken (no new script runner), and dropped
    assert _pending(requests).page_script_hash == "runs-hash"
    assert requests.request_rerun(TRAIN_TIMER)  # while the Runs page's script runs
    assert requests.on_scriptrunner_ready().type == ScriptRequestType.STOP  # nothing left to run


def test_timers_of_the_page_shown_and_fragment_clicks_go_through():
    install()
    requests = ScriptRequests()
    assert requests.request_rerun(RerunData(page_script_hash="train-hash", page_name="train"))
    assert _pending(requests).page_script_hash == "train-hash"
    assert requests.request_rerun(TRAIN_TIMER)  # the Train page's own timer
    assert _pending(requests).fragment_id_queue == ["live"]
    # A widget inside a fragment (not a timer) is the visitor's act: never dropped.
    clicked = RerunData(page_script_hash="runs-hash", page_name="runs", fragment_id="live")
    assert requests.request_rerun(clicked)
    assert _pending(requests).page_script_hash == "runs-hash"
