"""Evaluate page: an evaluated run's figures, a cell's gallery, Grad-CAM, comparison; evaluating on demand."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.evaluation import evaluate_run, evaluation_dir, load_evaluation
from engine.workflow import evaluation_state
from engine.runs import Run

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "evaluate.py")
TIMEOUT = 120

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluated(trained_run):
    if load_evaluation(trained_run.path) is None:
        evaluate_run(trained_run.path, n_resamples=200)
    return trained_run


def _page(run_id: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception, at.exception
    return at


def test_figures_cell_gallery_and_activation_map(evaluated):
    ev = load_evaluation(evaluated.path)
    at = _page(evaluated.id)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Accuracy"] == f"{ev.summary['accuracy']:.3f}"
    assert metrics["Temperature"] == f"{ev.summary['calibration']['temperature']:.3g}"
    assert any(c.value.startswith("95 % CI [") for c in at.caption)

    classes, counts = ev.classes, ev.summary["confusion"]["counts"]
    i = max(range(len(classes)), key=lambda k: counts[k][k])
    at.selectbox(key="eval_true").set_value(classes[i]).run()
    at.selectbox(key="eval_pred").set_value(classes[i]).run()
    assert not at.exception, at.exception
    assert f"True {classes[i]}, predicted {classes[i]}: {counts[i][i]} image(s)" in [h.value for h in at.subheader]
    why = [b for b in at.button if b.key and b.key.startswith("cell_why_")]
    assert len(why) == counts[i][i] > 0

    images_before = len(at.get("image"))
    why[0].click().run()
    assert not at.exception, at.exception
    assert any("Grad-CAM" in m.value for m in at.markdown)
    assert len(at.get("image")) == images_before + 2  # what the model saw + the map of the (predicted = true) class

    per_class = at.dataframe[0].value
    assert list(per_class["class"]) == classes
    labels = {b.proto.label for b in at.get("download_button")}
    assert {"Download per-class table (CSV)", "Download per-image predictions (CSV)",
            "Download confusion matrix (CSV)"} <= labels
    # Calibration, threshold, overfitting (and the confusion matrix) are plotly charts.
    assert len(at.get("plotly_chart")) >= 4


def test_unevaluated_run_is_evaluated_in_the_background_then_compared(evaluated, workspace_home):
    copy = Run(shutil.copytree(evaluated.path, evaluated.path.parent / f"{evaluated.id}-copy"))
    shutil.rmtree(evaluation_dir(copy.path))
    at = _page(copy.id)
    assert any("not been evaluated yet" in i.value for i in at.info)
    next(b for b in at.button if b.key == "eval_start").click().run()
    deadline = time.time() + 300
    while (evaluation_state(copy.path) or {}).get("state") == "running" and time.time() < deadline:
        time.sleep(1)
    state = evaluation_state(copy.path)
    assert state and state["state"] == "done", state
    at = _page(copy.id)
    assert "Accuracy" in {m.label for m in at.metric}
    # Same weights, same validation split: nothing flips, McNemar says noise.
    at.selectbox(key="eval_other").set_value(evaluated.id).run()
    assert not at.exception, at.exception
    assert {m.label: m.value for m in at.metric}["McNemar p-value"] == "1"
    assert any("within noise" in m.value for m in at.markdown)


def test_a_run_just_done_says_filling_in_until_its_follow_up_has_evaluated_it(evaluated):
    import os

    from engine.jobs.tasks import process_start

    copy = Run(shutil.copytree(evaluated.path, evaluated.path.parent / f"{evaluated.id}-filling"))
    shutil.rmtree(evaluation_dir(copy.path))
    # What the job writes the moment training ends: done, its evaluation following (this process stands in
    # for the job's, so the follow-up reads as running).
    copy.update_status(state="done", follow_up={"state": "running", "stage": "evaluate", "message": "evaluating",
                                                "pid": os.getpid(), "pid_start": process_start(os.getpid())})
    at = _page(copy.id)
    assert any("Filling in" in i.value for i in at.info)
    assert not at.metric and not any(b.key == "eval_start" for b in at.button)  # no second evaluation offered
    evaluate_run(copy.path, n_resamples=200)
    copy.update_status(follow_up={"state": "done"})
    at = _page(copy.id)
    assert "Accuracy" in {m.label for m in at.metric}
