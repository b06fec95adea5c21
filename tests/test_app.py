"""The entry point: navigation of the six pages, the sidebar, and queue recovery on start."""
from __future__ import annotations

import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

from engine.jobs import queue as jobs
from engine.runs import new_run
from engine.training.config import TrainConfig

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
TIMEOUT = 90


def _sidebar_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.sidebar.markdown)


def test_app_opens_on_defaults_and_every_page_runs():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    text = _sidebar_text(at)
    assert "fashion-mnist" in text and "mobilenet_v2" in text and "none yet" in text
    titles = {"pages/backbones.py": "Backbone", "pages/train.py": "Train", "pages/predict.py": "Predict"}
    for page in ("pages/backbones.py", "pages/train.py", "pages/runs.py", "pages/predict.py", "pages/export.py",
                 "pages/dataset.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        if page in titles:
            assert at.title[0].value == titles[page]


def test_start_marks_dead_runs_interrupted(shapes_dir):
    # A run the queue believes is running, whose worker died with the old server.
    run = new_run("dead-worker")
    run.write_config(TrainConfig(dataset=str(shapes_dir)).to_dict())
    run.update_status(state="running", stage="train", epoch=2)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with closing(jobs._db()) as db:
        db.execute("INSERT INTO jobs (run_dir, state, pid, created, started) VALUES (?, 'running', ?, ?, ?)",
                   (str(run.path.resolve()), gone.pid, time.time(), time.time()))
    st.cache_resource.clear()  # as a fresh server process
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["run"] = run.id
    at.run()
    assert not at.exception, at.exception
    assert run.status()["state"] == "interrupted"
    assert "interrupted" in _sidebar_text(at)


def test_a_server_data_root_holding_the_server_folder_stops_the_app_at_start(monkeypatch):
    from engine.hosting.health import health_report
    from engine.workspace import home

    monkeypatch.setenv("TS_DATA_ROOTS", str(home().parent))  # would list every visitor's uploads as a dataset
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "data roots" in at.error[0].value and "TRANSFER_STUDIO_HOME" in at.error[0].value
    assert not at.sidebar.markdown  # no page, no sidebar: nothing is served
    report = health_report()
    assert not report["ok"] and not next(c for c in report["checks"] if c["check"] == "data roots")["ok"]
    monkeypatch.delenv("TS_DATA_ROOTS")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.error and "fashion-mnist" in _sidebar_text(at)
