"""The load bench at test size: two browser sessions on the hosted app while a (small) fine-tune trains.

Each session uploads its own digits classes, trains a linear probe, watches it, predicts and exports;
the checks are the bench's own (tests/load/harness.py): isolation, own results, a fair queue, a clean
server log. No timing is asserted; `make bench-load` prints the figures.
"""
from __future__ import annotations


import pytest
from conftest import need_browser

from tests.load.harness import format_report, load_test

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
SUITE_SECONDS = 190  # the suite's longest file (2-3 min): conftest starts it first


# A lost sidebar click (seen 2 of 3 suite runs on 2026-12-02/03; the 8-session bench still loses about one
# in 400 visits, see the README) is recovered as a visitor would, by a second click or a reload, and listed in
# the report's `stalls`; at most one per session passes. Passed every run since the harness learnt that.
def test_two_sessions_each_get_their_own_results_in_a_fair_queue():
    need_browser()
    report = load_test(2, finetune_data=None, finetune_image_size=32, trivial_rounds=1, think_s=1.0,
                       run_timeout_s=400)
    text = format_report(report)
    assert not report["browser_errors"], text
    # A page that hung until a reload is shown in the text; more than one per session is a failure.
    assert len(report["stalls"]) <= len(report["results"]), text
    for session in report["results"]:
        assert session["state"] == "done" and not session["problems"], text
        assert session["runs_listed"] == [session["run"]] and len(session["uploads_listed"]) == 1, text
        assert session["predicted"] in session["classes"], text
    assert len({s["run"] for s in report["results"]}) == 2
    # The fine-tune was queued first and started first; the sessions' runs follow in submission order.
    assert report["fair"] and [j["who"] for j in report["queue"]][0] == "fine-tune", text
    assert len(report["queue"]) == 3, text
    assert report["finetune"]["state"] == "done", text
    assert report["server_log_errors"] == [], text
    assert report["pages"]["real"]["all"]["n"] > 0 and report["pages"]["trivial"]["all"]["n"] > 0
    assert report["passed"], text
