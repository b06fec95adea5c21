"""Train page: start a real run through the real queue, watch it finish, see its curves and evaluation."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import draw_shape

from engine.runs import Run, list_runs
from engine.workflow import run_settled
from engine.workspace import runs_dir

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "train.py")
TIMEOUT = 60


def _page(**state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def _number(at: AppTest, label: str):
    return next(w for w in at.number_input if w.label == label)


def _start(at: AppTest, image_size: int, mode: str = "linear", epochs: int | None = None) -> AppTest:
    """Start a run; the linear probe has no epochs to set (it is one converged fit)."""
    if mode != "linear":
        at.radio(key="train_mode").set_value(mode).run()
        at.number_input(key=f"train_epochs_{mode}").set_value(epochs)
    else:
        assert at.number_input(key="train_epochs_linear").disabled
    _number(at, "Image size (px)").set_value(image_size)
    at.selectbox(key="train_batch").set_value(16)
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


def test_defaults_come_from_engine():
    from engine.training.config import DEFAULT_EPOCHS, DEFAULT_LR, MODES

    at = _page()
    assert len(at.radio(key="train_mode").options) == len(MODES)
    assert at.number_input(key="train_epochs_linear").value == DEFAULT_EPOCHS["linear"]
    assert at.number_input(key="train_lr_linear").value == DEFAULT_LR["linear"]
    # built-in 28 px data on CPU: a small, fast size rather than 224, with the reason shown
    assert _number(at, "Image size (px)").value == 96
    assert any("96 px" in c.value for c in at.caption)
    at.radio(key="train_mode").set_value("full").run()
    assert at.number_input(key="train_epochs_full").value == DEFAULT_EPOCHS["full"]
    assert any("No run yet" in i.value for i in at.info)


def test_bad_dataset_shows_user_error_not_traceback(tmp_path, monkeypatch):
    # A folder the operator allows (TS_DATA_ROOTS) that holds only one class: not trainable.
    monkeypatch.setenv("TS_DATA_ROOTS", str(tmp_path))
    folder = tmp_path / "one-class" / "cat"
    folder.mkdir(parents=True)
    for i in range(3):
        draw_shape("circle", np.random.default_rng(i)).save(folder / f"{i}.png")
    before = {r.id for r in list_runs()}
    at = _page(dataset=str(tmp_path / "one-class"))
    _start(at, image_size=64)
    assert any(e.value.startswith("Cannot start training:") and "only one class" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert not at.exception
    assert {r.id for r in list_runs()} == before  # nothing queued


@pytest.mark.slow
def test_start_run_trains_in_worker_and_shows_results(shapes_dir, monkeypatch):
    monkeypatch.setenv("TS_DATA_ROOTS", str(shapes_dir.parent))  # visitors may open folders only under a root
    at = _page(dataset=str(shapes_dir))
    at = _start(at, image_size=64)
    run_id = at.session_state["run"]
    run = Run(runs_dir() / run_id)
    assert run.exists()
    assert at.query_params["run"] == run_id  # a refresh reopens the same run
    config = run.config()
    assert (config["mode"], config["epochs"], config["image_size"], config["batch_size"]) == ("linear", 1, 64, 16)
    assert Path(config["dataset"]) == shapes_dir.resolve()
    assert run.status()["state"] in {"queued", "running", "done"}
    assert any(run_id in s.value for s in at.subheader)

    # The run is "done" with its headline figures while the evaluation and the export still fill in.
    done_early = None
    deadline = time.time() + 180
    while not run_settled(run) and time.time() < deadline:
        status = run.status()
        if done_early is None and status.get("state") == "done" and status["follow_up"]["state"] == "running":
            done_early = (status, run.evaluation(), run.onnx_file.is_file())
        time.sleep(0.1)
    status = run.status()
    assert status["state"] == "done", status
    assert status["follow_up"]["state"] == "done", status
    assert done_early is not None, "the run was never done before its follow-up ended"
    early_status, early_evaluation, early_onnx = done_early
    assert early_evaluation["accuracy"] == run.evaluation()["accuracy"]  # the figures shown first are final
    assert not early_onnx  # the export came after "done"

    # A fresh session that opens the run from the URL, as after a refresh.
    at2 = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at2.query_params["run"] = run_id
    at2.session_state["dataset"] = str(shapes_dir)
    at2.run()
    assert not at2.exception, at2.exception
    assert any("`done`" in m.value for m in at2.markdown)
    charts = at2.get("plotly_chart")
    assert len(charts) == 2  # the probe's cross-validation curve (no one-point epoch curves), confusion matrix
    cv = run.metrics()[0]["probe"]["cv"]
    assert len(cv) > 1
    assert len(at2.dataframe[0].value) == len(cv)  # one row per (scaling, C) the probe tried
    metrics = {m.label: m.value for m in at2.metric}
    evaluation = run.evaluation()
    assert metrics["Accuracy"] == f"{evaluation['accuracy']:.3f}"
    assert metrics["Macro F1"] == f"{evaluation['macro_f1']:.3f}"
    assert metrics["Balanced accuracy"] == f"{evaluation['balanced_accuracy']:.3f}"
    per_class = at2.dataframe[1].value
    assert list(per_class["class"]) == ["circle", "square", "triangle"]
    assert len(run.metrics()) == 1  # the probe: one converged fit
    assert run.onnx_file.is_file()
    assert [b.label for b in at2.button] == ["Start training", "Find a learning rate"]  # no Cancel when finished


@pytest.mark.slow
def test_cancel_stops_a_run(shapes_dir, monkeypatch):
    monkeypatch.setenv("TS_DATA_ROOTS", str(shapes_dir.parent))
    at = _page(dataset=str(shapes_dir))
    at = _start(at, image_size=64, mode="full", epochs=500)
    run = Run(runs_dir() / at.session_state["run"])
    at.button(key="cancel_run").click().run()
    assert not at.exception
    deadline = time.time() + 120
    while not run_settled(run) and time.time() < deadline:
        time.sleep(1)
    assert run.status()["state"] == "cancelled"
    at.run()
    assert any("Cancelled" in i.value for i in at.info)
    assert len(run.metrics()) < 500


def test_failed_run_shows_error_in_words(shapes_dir):
    from engine.runs import new_run
    from engine.training.config import TrainConfig

    run = new_run("failed-for-test")
    run.write_config(TrainConfig(dataset=str(shapes_dir)).to_dict())
    run.update_status(state="failed", stage="train",
                      error="out of memory: lower the batch size or the image size and start again")
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.query_params["run"] = run.id
    at.run()
    assert not at.exception, at.exception
    assert any("Training failed: out of memory" in e.value for e in at.error)
    assert not at.metric  # no evaluation for a failed run


@pytest.mark.slow
def test_interrupted_run_can_be_resumed_from_the_page(shapes_dir):
    from engine.runs import new_run
    from engine.training.callbacks import Callback, CancelledByUser
    from engine.training.config import TrainConfig
    from engine.training.runner import train

    # Two epochs trained for real, then the worker "died": the run is interrupted with a last.pt.
    run = new_run("resume-for-test")
    config = TrainConfig(dataset=str(shapes_dir), mode="partial", unfreeze_stages=1, epochs=4, image_size=32,
                         batch_size=16)
    run.write_config(config.to_dict())

    class StopAfterTwo(Callback):
        def on_epoch_end(self, record):
            if record["epoch"] == 2:
                run.request_cancel()

    with pytest.raises(CancelledByUser):  # stopped after epoch 2, as a killed worker would have
        train(config, run, callbacks=[StopAfterTwo()])
    assert run.last_checkpoint.is_file() and len(run.metrics()) == 2
    run.update_status(state="interrupted", stage="interrupted", error="the worker stopped (test)")

    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.query_params["run"] = run.id
    at.run()
    assert not at.exception, at.exception
    assert any("interrupted" in w.value for w in at.warning)
    at.button(key="resume_run").click().run()
    assert not at.exception, at.exception
    deadline = time.time() + 180
    while not run_settled(run) and time.time() < deadline:
        time.sleep(1)
    assert run.status()["state"] == "done", run.status()
    assert [m["epoch"] for m in run.metrics()] == [1, 2, 3, 4]


@pytest.mark.slow
def test_lr_finder_runs_in_background_and_its_suggestion_sets_the_lr(shapes_dir, monkeypatch):
    from engine.jobs.tasks import task_state
    from engine.workspace import home

    monkeypatch.setenv("TS_DATA_ROOTS", str(shapes_dir.parent))
    at = _page(dataset=str(shapes_dir))
    assert next(b for b in at.button if b.label == "Find a learning rate").disabled  # the probe has no LR
    at.radio(key="train_mode").set_value("partial").run()
    _number(at, "Image size (px)").set_value(48)
    at.selectbox(key="train_batch").set_value(16)
    next(b for b in at.button if b.label == "Find a learning rate").click().run()
    assert not at.exception, at.exception
    folders = list((home() / "lr-find").iterdir())
    assert len(folders) == 1
    deadline = time.time() + 300
    while task_state(folders[0])["state"] == "running" and time.time() < deadline:
        time.sleep(1)
    assert task_state(folders[0])["state"] == "done", task_state(folders[0])
    at.run()
    assert not at.exception, at.exception
    use = next(b for b in at.button if b.label.startswith("Use "))
    suggested = float(use.label.split()[1])
    assert 1e-7 <= suggested <= 1.0
    use.click().run()
    assert at.number_input(key="train_lr_partial").value == suggested


@pytest.mark.slow
def test_advanced_settings_reach_the_run_config(shapes_dir, monkeypatch):
    monkeypatch.setenv("TS_DATA_ROOTS", str(shapes_dir.parent))
    at = _page(dataset=str(shapes_dir), val_fraction=0.3)
    at.number_input(key="train_patience").set_value(2)
    at.number_input(key="train_seed").set_value(7)
    at.radio(key="train_balance").set_value("weights")
    at = _start(at, image_size=48)
    run = Run(runs_dir() / at.session_state["run"])
    config = run.config()
    assert (config["patience"], config["seed"], config["val_fraction"], config["balance"]) == (2, 7, 0.3, "weights")
    deadline = time.time() + 180
    while not run_settled(run) and time.time() < deadline:
        time.sleep(1)
    assert run.status()["state"] == "done", run.status()
