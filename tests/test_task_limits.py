"""Issue 17, points 6, 8, 9 and 12: every background task obeys the limits, server folders cannot expose the
server's own files, concurrent first visitors build a dataset once, and a stale pid is never trusted.

Each test feeds the hostile input through the call a page (or the CLI) makes and checks the refusal in words
and that nothing was half-written."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from engine.cli import main as cli_main
from engine.data.builtin import BUILTIN_DATASETS, materialise, register_builtin
from engine.data.dataset import load_dataset
from engine.data.ingest import data_roots, ingest_zip, server_datasets, validate_spec
from engine.errors import UserError
from engine.insight import insight_folder
from engine.workflow import start_insight
from engine.jobs import queue as jobs
from engine.runs import new_run
from engine.jobs.tasks import cancel_task, kill_group, pid_alive, process_start, start_task, task_state
from engine.workspace import COMPLETE_MARKER, home, runs_dir, shared_datasets_dir, use_workspace
from conftest import wait_for

LONG_TASK = ["bench", "health", "--n", "1000000"]  # runs for minutes unless stopped


def _settle(folder: Path, timeout: float = 60) -> dict:
    return wait_for(lambda: (s := task_state(folder, None)) and s["state"] != "running" and s, timeout)


@pytest.fixture
def unrelated_process():
    """A process that is not ours to stop (the role a pid reused after a reboot plays), leading its own group."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


# --- point 6: every task obeys the limits ---------------------------------------------------------------

def test_no_task_starts_below_the_free_disk_floor_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("TS_MIN_FREE_DISK_MB", str(10**12))  # more than any disk has free
    with pytest.raises(UserError, match="TS_MIN_FREE_DISK_MB"):
        start_task(tmp_path / "task", ["backbones"], None)
    assert not (tmp_path / "task").exists()
    # Another test of this worker (the Insight page's) may have left a finished insight there: the refusal
    # must write nothing, so compare the folder's files before and after rather than its existence.
    folder = insight_folder("fashion-mnist", "mobilenet_v2")
    before = sorted((p, p.stat().st_mtime_ns) for p in folder.rglob("*")) if folder.exists() else None
    with pytest.raises(UserError, match="TS_MIN_FREE_DISK_MB"):  # the Insight page's call
        start_insight("fashion-mnist", "mobilenet_v2")
    after = sorted((p, p.stat().st_mtime_ns) for p in folder.rglob("*")) if folder.exists() else None
    assert after == before


def test_a_refused_sweep_or_lr_finder_leaves_no_folder(monkeypatch):
    from engine.sweep.sweep import sweep_folder
    from engine.training.config import TrainConfig
    from engine.training.lr_finder import lr_find_folder
    from engine.workflow import start_lr_find, start_sweep

    monkeypatch.setenv("TS_MIN_FREE_DISK_MB", str(10**12))
    with pytest.raises(UserError, match="TS_MIN_FREE_DISK_MB"):  # the Backbone page's sweep
        start_sweep("fashion-mnist", ["mobilenet_v2", "efficientnet_lite0"], image_size=64)
    assert not sweep_folder("fashion-mnist", ["mobilenet_v2", "efficientnet_lite0"], 64).exists()
    config = TrainConfig(dataset="fashion-mnist", image_size=64)
    with pytest.raises(UserError, match="TS_MIN_FREE_DISK_MB"):  # the Train page's LR finder
        start_lr_find(config)
    assert not lr_find_folder(config).exists()


def test_a_backbone_name_from_the_url_is_checked_where_it_enters(capsys):
    forged = "mobilenet_v2\n2026-01-01 audit queue workspace=someone-else"
    with pytest.raises(UserError, match="unknown backbone"):
        start_insight("fashion-mnist", forged)
    assert not insight_folder("fashion-mnist", forged).exists()
    assert cli_main(["insight", "fashion-mnist", "--backbone", forged]) == 2
    assert capsys.readouterr().err.startswith("error: unknown backbone")


def test_the_insight_page_falls_back_from_an_unknown_backbone_in_the_url():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "pages" / "insight.py"), default_timeout=60)
    at.query_params["backbone"] = "no_such_net\nforged line"
    at.run()
    assert not at.exception, at.exception
    assert any("not a known backbone" in w.value for w in at.warning)
    assert at.query_params["backbone"] == "mobilenet_v2"


@pytest.mark.slow
def test_the_server_runs_at_most_tasks_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TS_MAX_TASKS", "1")
    first = start_task(tmp_path / "first", LONG_TASK, None)
    try:
        with pytest.raises(UserError, match="TS_MAX_TASKS=1"):
            start_task(tmp_path / "second", ["backbones"], None)
        assert not (tmp_path / "second").exists()
        assert start_task(tmp_path / "first", LONG_TASK, None)["pid"] == first["pid"]  # the same task, no new one
    finally:
        cancel_task(tmp_path / "first")
    assert _settle(tmp_path / "first")["state"] == "cancelled"
    start_task(tmp_path / "second", ["backbones"], None)  # the slot is free again
    assert _settle(tmp_path / "second")["state"] == "done"


@pytest.mark.slow
def test_a_hosted_workspace_runs_at_most_its_share_of_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("TS_PROFILE", "hosted")
    monkeypatch.setenv("TS_MAX_TASKS_PER_WORKSPACE", "1")
    mine, other = "a" * 32, "b" * 32
    with use_workspace(mine):
        start_task(tmp_path / "mine-1", LONG_TASK, None)
        try:
            with pytest.raises(UserError, match="TS_MAX_TASKS_PER_WORKSPACE=1"):
                start_task(tmp_path / "mine-2", ["backbones"], None)
            assert not (tmp_path / "mine-2").exists()
            with use_workspace(other):  # another visitor is not held up by this one
                start_task(tmp_path / "other", ["backbones"], None)
                assert _settle(tmp_path / "other")["state"] == "done"
        finally:
            cancel_task(tmp_path / "mine-1")
        _settle(tmp_path / "mine-1")


@pytest.mark.slow
def test_a_task_past_the_wall_clock_cap_is_stopped_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("TS_MAX_TASK_HOURS", str(1.5 / 3600))  # 1.5 s
    task = start_task(tmp_path, LONG_TASK, None)
    time.sleep(2.0)
    state = task_state(tmp_path, None)
    assert state["state"] == "failed" and "TS_MAX_TASK_HOURS" in state["error"]
    wait_for(lambda: not pid_alive(task["pid"]), 10)


def test_resuming_a_run_is_checked_like_queueing_one(monkeypatch):
    monkeypatch.setenv("TS_PROFILE", "hosted")
    monkeypatch.setenv("TS_MAX_EPOCHS", "5")
    with use_workspace("c" * 32):
        run = new_run("resume-over-ceiling")
        run.write_config({"dataset": "fashion-mnist", "backbone": "mobilenet_v2", "mode": "full", "epochs": 40})
        run.update_status(state="interrupted")
        run.last_checkpoint.write_bytes(b"not needed: the check comes first")
        with pytest.raises(UserError, match="TS_MAX_EPOCHS"):
            jobs.submit(run, resume=True)
        assert run.status()["state"] == "interrupted"
        assert str(run.path.resolve()) not in {j["run_dir"] for j in jobs.list_jobs()}


# --- point 12: stale process ids ------------------------------------------------------------------------

def test_a_task_pid_now_held_by_another_process_is_neither_alive_nor_signalled(tmp_path, unrelated_process):
    from engine.workspace import write_json_atomic

    pid = unrelated_process.pid
    assert pid_alive(pid, process_start(pid))
    # task.json written before a reboot: the same pid, another process's start.
    write_json_atomic(tmp_path / "task.json", {"state": "running", "pid": pid, "pid_start": "old-boot:12345",
                                               "argv": LONG_TASK, "started_at": time.time() - 60})
    assert not pid_alive(pid, "old-boot:12345")
    assert not cancel_task(tmp_path)
    assert not kill_group(pid, signal.SIGTERM, "old-boot:12345")
    assert task_state(tmp_path, None)["state"] == "failed"
    time.sleep(0.2)
    assert unrelated_process.poll() is None  # never signalled


def test_a_job_pid_now_held_by_another_process_is_marked_interrupted(unrelated_process):
    run = new_run("stale-pid")
    run.write_config({"dataset": "fashion-mnist"})
    run.update_status(state="running", stage="training")
    jobs.list_jobs()  # the queue's table exists
    with sqlite3.connect(home() / "jobs.sqlite") as db:
        db.execute("INSERT INTO jobs (run_dir, state, pid, created, started, executor, ref) "
                   "VALUES (?, 'running', ?, ?, ?, 'local', 'old-boot:12345')",
                   (str(run.path.resolve()), unrelated_process.pid, time.time(), time.time()))
    assert str(run.path.resolve()) in jobs.recover_interrupted()
    assert run.status()["state"] == "interrupted"
    assert unrelated_process.poll() is None


# --- point 8: server folders ----------------------------------------------------------------------------

def test_a_data_root_overlapping_the_server_folder_is_refused(monkeypatch, tmp_path):
    for root in (home().parent, home(), runs_dir()):
        monkeypatch.setenv("TS_DATA_ROOTS", str(root))
        with pytest.raises(UserError, match="TRANSFER_STUDIO_HOME"):
            data_roots()
        with pytest.raises(UserError, match="TRANSFER_STUDIO_HOME"):
            validate_spec(str(tmp_path))


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)


def test_linked_folders_inside_a_data_root_are_skipped(monkeypatch, tmp_path):
    secret = tmp_path / "elsewhere"
    for i in range(3):
        _png(secret / "private" / f"{i}.png")
    root = tmp_path / "root"
    for label in ("cat", "dog"):
        for i in range(3):
            _png(root / "pets" / label / f"{i}.png")
    (root / "pets" / "leak").symlink_to(secret / "private")  # a linked class folder
    (root / "linked-dataset").symlink_to(secret)  # a linked dataset folder
    monkeypatch.setenv("TS_DATA_ROOTS", str(root))
    assert server_datasets() == [str(root / "pets")]
    dataset = load_dataset(validate_spec(str(root / "pets")))
    assert sorted(dataset.manifest["label"].unique()) == ["cat", "dog"]


# --- point 9: concurrent first visitors -----------------------------------------------------------------

def _together(work, n: int = 4) -> list:
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(work())) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_concurrent_first_visitors_build_a_builtin_dataset_once():
    calls = []

    @register_builtin("test-slow-build", "a slow builder, for this test")
    def _slow(dest: Path) -> None:
        calls.append(1)
        for i in range(5):
            _png(dest / "train" / "a" / f"{i}.png")
            time.sleep(0.05)
        _png(dest / "train" / "b" / "0.png")

    try:
        folders = _together(lambda: materialise("test-slow-build"))
        assert len(calls) == 1 and len(set(folders)) == 1 and len(folders) == 4
        assert (folders[0] / COMPLETE_MARKER).is_file()
        assert len(list(folders[0].glob("train/*/*.png"))) == 6
        assert not [p for p in shared_datasets_dir().iterdir() if ".partial-" in p.name or ".old-" in p.name]
    finally:
        BUILTIN_DATASETS.pop("test-slow-build", None)
        import shutil

        shutil.rmtree(shared_datasets_dir() / "builtin-test-slow-build", ignore_errors=True)


def test_a_failed_build_leaves_nothing_in_place():
    @register_builtin("test-failing-build", "a builder that fails halfway, for this test")
    def _fails(dest: Path) -> None:
        _png(dest / "train" / "a" / "0.png")
        raise OSError("disk full")

    try:
        with pytest.raises(OSError):
            materialise("test-failing-build")
        assert not [p.name for p in shared_datasets_dir().iterdir() if "test-failing-build" in p.name]
    finally:
        BUILTIN_DATASETS.pop("test-failing-build", None)


def test_two_tabs_uploading_the_same_zip_extract_it_once(tmp_path):
    upload = tmp_path / "pets.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        for label in ("cat", "dog"):
            for i in range(20):
                image = tmp_path / f"{label}{i}.png"
                _png(image)
                archive.write(image, f"{label}/{i}.png")
    folders = _together(lambda: ingest_zip(upload))
    assert len(folders) == 4 and len(set(folders)) == 1
    dest = folders[0]
    assert (dest / COMPLETE_MARKER).is_file() and len(list(dest.glob("*/*.png"))) == 40
    assert not [p for p in dest.parent.iterdir() if ".partial-" in p.name]
    assert os.path.getmtime(dest) == os.path.getmtime(ingest_zip(upload))  # a third upload reuses it


def test_tasks_that_train_keep_to_the_hosted_image_size_ceiling(monkeypatch):
    from engine.training.config import TrainConfig
    from engine.training.lr_finder import lr_find_folder
    from engine.workflow import start_lr_find

    monkeypatch.setenv("TS_PROFILE", "hosted")
    monkeypatch.setenv("TS_MAX_IMAGE_SIZE", "64")
    with use_workspace("d" * 32):
        config = TrainConfig(dataset="fashion-mnist", image_size=512)
        with pytest.raises(UserError, match="TS_MAX_IMAGE_SIZE"):  # the Train page's LR finder
            start_lr_find(config)
        assert not lr_find_folder(config).exists()
        with pytest.raises(UserError, match="TS_MAX_IMAGE_SIZE"):
            start_insight("fashion-mnist", "mobilenet_v2", image_size=512)
        assert not insight_folder("fashion-mnist", "mobilenet_v2").exists()


@pytest.mark.slow
def test_a_dispatcher_pid_now_held_by_another_process_does_not_pass_for_a_live_dispatcher(unrelated_process):
    import fcntl

    pid_file, start_file = home() / "dispatcher.pid", home() / "dispatcher.start"
    if pid_file.is_file() and pid_alive(int(pid_file.read_text()), start_file.read_text().strip() or None):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # an earlier test's dispatcher
        wait_for(lambda: not pid_alive(int(pid_file.read_text())), 20)
    with open(home() / "dispatcher.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a dispatcher that is just exiting still holds it
        pid_file.write_text(str(unrelated_process.pid))  # recorded before a reboot: the pid is another's now
        start_file.write_text("old-boot:12345")
        jobs.ensure_dispatcher()
        time.sleep(0.5)
    # A dispatcher was started after all: it takes the lock once it is free and records itself.
    new = wait_for(lambda: (text := pid_file.read_text().strip()) != str(unrelated_process.pid) and int(text), 30)
    assert start_file.read_text().strip() == process_start(new) or not pid_alive(new)
    assert unrelated_process.poll() is None
