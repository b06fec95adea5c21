"""Hosted profile (TS_PROFILE=hosted): one workspace per visitor, the limits, the idle clean-up (TTL),
the password gate, the health check. Sharing and the model demo are in test_hosting_share.py."""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import make_shapes_dataset, open_app
from engine.cli import main as cli_main
from engine.data.ingest import ingest_zip, uploaded_datasets
from engine.errors import UserError
from engine.hosting.commands import enter_workspace
from engine.idle_cache import IdleCache
from engine.jobs.queue import check_can_queue
from engine.settings.limits import limits
from engine.hosting.sharing import is_shared, share_run
from engine.hosting.cleanup import remove_idle_workspaces
from engine.hosting.workspaces import new_token, touch, workspace_for_token
from engine.runs import Run, list_runs, new_run
from engine.jobs.queue import max_concurrent
from engine.workflow import queue_run
from engine.training.config import TrainConfig
from engine.workspace import child_env, datasets_dir, runs_dir, use_workspace, workspace_root, workspaces_dir

DAY = 86400.0


@pytest.fixture
def hosted(monkeypatch):
    monkeypatch.setenv("TS_PROFILE", "hosted")


@pytest.fixture(scope="module")
def shapes_zip(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes-zip")
    make_shapes_dataset(root / "shapes", per_class=4)
    return Path(shutil.make_archive(str(root / "shapes"), "zip", root / "shapes"))


def _run_in(wid: str, label: str, state: str = "done") -> Run:
    """A run directory in workspace ``wid``: its config and a status, as the queue leaves them."""
    with use_workspace(wid):
        run = new_run(label)
        run.write_config(TrainConfig(dataset="digits", mode="linear").to_dict())
        run.update_status(state=state, stage=state)
    return run


def _table_runs(at: AppTest) -> list[str]:
    return list(at.dataframe[0].value["run"]) if at.dataframe else []


# -------------------------------------------------------------- isolation


def test_two_visitors_never_see_each_others_runs_or_uploads(hosted, shapes_zip):
    a, b = open_app(), open_app()
    token_a, token_b = a.query_params["ws"], b.query_params["ws"]
    assert token_a != token_b and len(token_a) >= 32  # each fresh session draws its own token
    assert any(c.value.endswith(f"?ws={token_a}") for c in a.sidebar.code)  # the link that reopens it
    wid_a, wid_b = workspace_for_token(token_a), workspace_for_token(token_b)
    run = _run_in(wid_a, "visitor-a")
    with use_workspace(wid_a):
        upload = ingest_zip(shapes_zip)
        assert uploaded_datasets() == [str(upload)]
    assert run.path.is_relative_to(workspaces_dir() / wid_a) and upload.is_relative_to(workspaces_dir() / wid_a)
    with use_workspace(wid_b):
        assert uploaded_datasets() == [] and list_runs() == []

    a.switch_page("pages/runs.py").run()
    b.switch_page("pages/runs.py").run()
    assert _table_runs(a) == [run.id]
    assert _table_runs(b) == [] and any("No runs yet" in i.value for i in b.info)

    # B pasting A's run id and upload path into the URL gets neither.
    nosy = open_app(ws=token_b, run=run.id, dataset=str(upload))
    sidebar = "\n".join(m.value for m in nosy.sidebar.markdown)
    assert "none yet" in sidebar and run.id not in sidebar
    assert any("not a built-in dataset, an upload" in w.value for w in nosy.warning)


def test_the_same_token_reopens_the_same_workspace(hosted):
    first = open_app()
    token = first.query_params["ws"]
    run = _run_in(workspace_for_token(token), "kept")
    # A new session (refresh, closed tab, restarted server) with the token from the URL.
    again = open_app("pages/runs.py", ws=token)
    assert again.query_params["ws"] == token
    assert _table_runs(again) == [run.id]


def test_a_malformed_token_opens_a_fresh_workspace(hosted):
    at = open_app(ws="../../etc")
    assert at.query_params["ws"] != "../../etc"
    assert any("not valid" in w.value for w in at.warning)


def test_local_profile_keeps_the_single_workspace(monkeypatch):
    monkeypatch.delenv("TS_PROFILE", raising=False)
    at = open_app()
    assert "ws" not in at.query_params
    assert workspace_root() == Path(os.environ["TRANSFER_STUDIO_HOME"])


def test_logs_say_which_workspace_started_which_job(hosted, caplog, capsys, monkeypatch):
    wid = workspace_for_token(new_token())
    with use_workspace(wid), caplog.at_level(logging.INFO, logger="transfer_studio"):
        check_can_queue(TrainConfig(dataset="digits", mode="linear"))
    assert f"workspace={wid[:8]} queue backbone=mobilenet_v2 mode=linear" in caplog.text
    run = _run_in(wid, "logged")
    monkeypatch.delenv("TS_WORKSPACE", raising=False)
    enter_workspace(argparse.Namespace(command="run-job", run_dir=str(run.path)))  # what a job does first
    assert f"run {run.id} started for workspace={wid[:8]}" in capsys.readouterr().err
    assert os.environ["TS_WORKSPACE"] == wid and runs_dir() == run.path.parent
    # Not monkeypatch.delenv: it would record wid as the value to restore after the test.
    os.environ.pop("TS_WORKSPACE")


def test_background_processes_work_in_the_workspace_that_started_them():
    wid = workspace_for_token(new_token())
    with use_workspace(wid):
        env, expected = child_env(), runs_dir()
    out = subprocess.run([sys.executable, "-c", "from engine.workspace import runs_dir; print(runs_dir())"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(expected) and wid in out


# -------------------------------------------------------------- limits


def test_hosted_ceilings_refuse_with_the_limit_and_what_to_do(hosted, monkeypatch):
    monkeypatch.setenv("TS_MAX_EPOCHS", "3")
    monkeypatch.setenv("TS_MAX_IMAGE_SIZE", "64")
    with use_workspace(workspace_for_token(new_token())):
        with pytest.raises(UserError, match=r"over this server's ceiling of 3 \(TS_MAX_EPOCHS\); choose fewer"):
            queue_run(TrainConfig(dataset="digits", mode="full", epochs=5, image_size=32))
        with pytest.raises(UserError, match=r"ceiling of 64 px \(TS_MAX_IMAGE_SIZE\)"):
            queue_run(TrainConfig(dataset="digits", mode="full", epochs=2, image_size=96))
        assert list_runs() == []  # refused before any run directory exists
    monkeypatch.delenv("TS_PROFILE")
    check_can_queue(TrainConfig(dataset="digits", mode="full", epochs=5, image_size=96))  # local: no ceilings


def test_train_page_offers_no_more_than_the_hosted_ceilings(hosted, monkeypatch):
    monkeypatch.setenv("TS_MAX_EPOCHS", "3")
    monkeypatch.setenv("TS_MAX_IMAGE_SIZE", "64")
    at = open_app("pages/train.py")
    at.radio(key="train_mode").set_value("full").run()
    epochs = at.number_input(key="train_epochs_full")
    size = next(w for w in at.number_input if w.label == "Image size (px)")
    assert (epochs.max, size.max) == (3, 64) and epochs.value <= 3 and size.value <= 64


def test_queued_jobs_per_workspace(hosted, monkeypatch):
    monkeypatch.setenv("TS_MAX_QUEUED", "1")
    wid = workspace_for_token(new_token())
    config = TrainConfig(dataset="digits", mode="linear")
    with use_workspace(wid):
        check_can_queue(config)
    _run_in(wid, "waiting", state="queued")
    with use_workspace(wid), pytest.raises(UserError, match="TS_MAX_QUEUED=1"):
        check_can_queue(config)
    with use_workspace(workspace_for_token(new_token())):
        check_can_queue(config)  # another visitor's queue is their own


def test_images_per_dataset_and_disk_quota_refuse_uploads(hosted, monkeypatch, shapes_zip):
    with use_workspace(workspace_for_token(new_token())):
        monkeypatch.setenv("TS_MAX_IMAGES", "5")
        with pytest.raises(UserError, match=r"12 images, over the limit of 5 per dataset \(TS_MAX_IMAGES\)"):
            ingest_zip(shapes_zip)
        monkeypatch.delenv("TS_MAX_IMAGES")
        datasets_dir().mkdir(parents=True)
        (datasets_dir() / "big.bin").write_bytes(b"\0" * 200_000)
        monkeypatch.setenv("TS_DISK_QUOTA_MB", "0.1")
        with pytest.raises(UserError, match=r"over its 0.1 MB disk quota \(TS_DISK_QUOTA_MB\); delete old runs"):
            ingest_zip(shapes_zip)
        with pytest.raises(UserError, match="TS_DISK_QUOTA_MB"):
            check_can_queue(TrainConfig(dataset="digits", mode="linear"))
        assert uploaded_datasets() == []


def test_train_page_shows_the_limit_when_hit(hosted, monkeypatch):
    # (The epoch and size ceilings cannot be hit from the page: its inputs stop at them.)
    monkeypatch.setenv("TS_MAX_QUEUED", "1")
    at = open_app("pages/train.py", dataset="digits")
    token = at.query_params["ws"]
    _run_in(workspace_for_token(token if isinstance(token, str) else token[0]), "waiting", state="queued")
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception, at.exception
    assert any("TS_MAX_QUEUED=1" in e.value and "Cannot start training" in e.value for e in at.error)


def test_dataset_page_shows_the_image_limit_when_hit(hosted, monkeypatch, shapes_zip):
    monkeypatch.setenv("TS_MAX_IMAGES", "5")
    at = open_app("pages/dataset.py", dataset="digits")
    at.file_uploader(key="zip_upload").set_value(("shapes.zip", shapes_zip.read_bytes(), "application/zip")).run()
    at.button(key="use_zip").click().run()
    assert not at.exception, at.exception
    assert any("over the limit of 5 per dataset (TS_MAX_IMAGES)" in e.value for e in at.error)


def test_limits_come_from_one_file_and_the_environment_wins(monkeypatch, tmp_path):
    file = tmp_path / "limits.toml"
    file.write_text("[limits]\nmax_epochs = 7\nmax_upload_mb = 5\njobs_per_device = 2\n")
    monkeypatch.setenv("TS_LIMITS_FILE", str(file))
    assert limits().max_epochs == 7 and limits().max_upload_mb == 5
    assert max_concurrent() == 2  # on this CPU-only host: 2 jobs for the one device
    monkeypatch.setenv("TS_MAX_EPOCHS", "4")
    assert limits().max_epochs == 4
    monkeypatch.setenv("TS_MAX_EPOCHS", "many")
    with pytest.raises(UserError, match="TS_MAX_EPOCHS"):
        limits()
    monkeypatch.delenv("TS_MAX_EPOCHS")
    file.write_text("[limits]\nmax_epoch = 7\n")
    with pytest.raises(UserError, match="unknown limit"):
        limits()


def test_limits_and_health_commands(capsys):
    assert cli_main(["limits", "--markdown"]) == 0
    table = capsys.readouterr().out
    for variable in ("TS_MAX_UPLOAD_MB", "TS_MAX_IMAGES", "TS_JOBS_PER_DEVICE", "TS_MAX_QUEUED", "TS_MAX_EPOCHS",
                     "TS_MAX_IMAGE_SIZE", "TS_DISK_QUOTA_MB", "TS_WORKSPACE_TTL_DAYS"):
        assert f"`{variable}`" in table
    assert cli_main(["health"]) == 0
    out = capsys.readouterr().out
    assert "ok   workspace writable" in out and "ok   job queue readable" in out


def test_idle_models_are_released():
    released = []
    cache: IdleCache[list] = IdleCache(lambda: 0.05, max_entries=2, on_release=released.append)
    first = cache.get("run-a/model.onnx", 1.0, lambda: ["a"])
    assert cache.get("run-a/model.onnx", 1.0, lambda: ["other"]) is first  # one per model file
    cache.get("run-b/model.onnx", 1.0, lambda: ["b"])
    cache.get("run-c/model.onnx", 1.0, lambda: ["c"])
    assert released == [["a"]] and len(cache) == 2  # the least recently used one beyond max_entries
    time.sleep(0.1)
    assert cache.release_idle() == 2 and len(cache) == 0


def test_visitors_cannot_change_the_shared_weights(hosted, tmp_path):
    from engine.models.supplied import install_weights

    with use_workspace(workspace_for_token(new_token())), pytest.raises(UserError, match="only its operator"):
        install_weights("resnet18", tmp_path / "resnet18.pth")


# -------------------------------------------------------------- TTL


def test_ttl_removes_idle_workspaces_but_never_shared_or_active_runs(hosted):
    now = time.time()
    idle, empty_idle, recent = (workspace_for_token(new_token()) for _ in range(3))
    plain, queued, running = _run_in(idle, "plain"), _run_in(idle, "queued", "queued"), _run_in(idle, "running",
                                                                                              "running")
    shared = _run_in(idle, "shared")
    shared.onnx_file.parent.mkdir(parents=True)
    shared.onnx_file.write_bytes(b"an exported model")
    share_run(shared)
    with use_workspace(idle):
        (datasets_dir() / "upload-1").mkdir(parents=True)
    gone = _run_in(empty_idle, "old")
    fresh = _run_in(recent, "fresh")
    for wid, at in ((idle, now - 30 * DAY), (empty_idle, now - 30 * DAY), (recent, now - DAY)):
        touch(wid, now=at)

    dry = remove_idle_workspaces(now=now, ttl_days=14, dry_run=True)
    assert gone.path.is_dir() and plain.path.is_dir()  # a dry run removes nothing
    report = remove_idle_workspaces(now=now, ttl_days=14)
    assert dry == report
    assert not (workspaces_dir() / empty_idle).exists()
    assert not plain.path.exists() and not (workspaces_dir() / idle / "datasets").exists()
    assert shared.path.is_dir() and is_shared(shared) and queued.path.is_dir() and running.path.is_dir()
    assert fresh.path.is_dir()
    entry = next(e for e in report if e["workspace"] == idle[:8])
    assert sorted(entry["kept"]) == sorted([shared.id, queued.id, running.id]) and not entry["removed"]


def test_cleanup_command(hosted, capsys):
    wid = workspace_for_token(new_token())
    _run_in(wid, "old")
    touch(wid, now=time.time() - 40 * DAY)
    assert cli_main(["cleanup", "--ttl-days", "30"]) == 0
    assert f"removed workspace {wid[:8]}" in capsys.readouterr().out
    assert not (workspaces_dir() / wid).exists()


# -------------------------------------------------------------- access


def test_password_gate(hosted, monkeypatch):
    monkeypatch.setenv("TS_PASSWORD", "correct horse")
    monkeypatch.setenv("TS_PASSWORD_DELAY_S", "0.001")  # the wait after a wrong one: test_hosting_abuse.py
    at = open_app()
    assert [t.label for t in at.text_input] == ["Password"] and not at.sidebar.markdown
    assert "ws" not in at.query_params  # no workspace before the gate
    at.text_input(key="access_password").input("wrong").run()
    assert any("not right" in e.value for e in at.error) and not at.sidebar.markdown
    at.text_input(key="access_password").input("correct horse").run()
    assert not at.exception, at.exception
    assert "ws" in at.query_params and any("Dataset" in m.value for m in at.sidebar.markdown)
