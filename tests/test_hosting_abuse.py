"""Issue 17, points 5, 7, 10, 11: a hostile visitor of the hosted profile, through the real code paths.

Workspaces cannot be minted without bound (no folder before the first write; server-wide caps that refuse in
words), a link cannot plant its reader in a workspace its sender chose (only issued tokens open one), the TTL
clean-up keeps what kept runs need and never deletes a run queued meanwhile, and secrets and errors stay on
the server (no TS_PASSWORD in children, no tracebacks, counted and slowed password guesses, no anonymous login
identity, no forged audit lines)."""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from streamlit import config as st_config

from conftest import make_shapes_dataset, open_app, stop_idle_dispatcher
from engine.data.ingest import ingest_zip, uploaded_datasets
from engine.errors import UserError
from engine.hosting.access import PasswordGuard, open_server_warning
from engine.hosting.cleanup import remove_idle_workspaces
from engine.hosting.workspaces import (issue_token, known_token, list_workspaces, new_token, token_issued, touch,
                                       workspace_for_identity, workspace_for_token)
from engine.runs import Run, new_run
from engine.jobs.queue import cancel, check_can_queue, queue_lock, submit
from engine.workflow import queue_run
from engine.jobs.tasks import spawn
from engine.training.config import TrainConfig
from engine.workspace import cache_dir, child_env, datasets_dir, home, runs_dir, use_workspace, workspaces_dir

DAY = 86400.0
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _hosted(monkeypatch):
    """Every case here is a visitor of a hosted server (a test that needs local use unsets it)."""
    monkeypatch.setenv("TS_PROFILE", "hosted")


@pytest.fixture(scope="module")
def shapes_zip(tmp_path_factory, shapes_dir) -> Path:
    """The session's drawn shapes as the .zip a visitor uploads."""
    return Path(shutil.make_archive(str(tmp_path_factory.mktemp("abuse-zip") / "shapes"), "zip", shapes_dir))


def _token(at) -> str:
    token = at.query_params["ws"]
    return token if isinstance(token, str) else token[0]


# -------------------------------------------------------------- 5: workspaces cannot be minted without bound


def test_fresh_sessions_that_only_look_leave_no_folder_behind():
    before = set(list_workspaces())
    tokens = []
    for page in ("pages/dataset.py", "pages/runs.py", "pages/train.py"):
        at = open_app(page)
        tokens.append(_token(at))
    assert len(set(tokens)) == 3 and all(token_issued(t) for t in tokens)
    assert set(list_workspaces()) == before  # three visitors, no folder, no disk
    assert not any((workspaces_dir() / workspace_for_token(t)).exists() for t in tokens)


def test_a_full_server_refuses_a_new_workspace_in_words_and_writes_nothing(monkeypatch, shapes_zip):
    old = workspace_for_token(issue_token())
    with use_workspace(old):
        new_run("earlier")  # a workspace that exists already
    monkeypatch.setenv("TS_MAX_WORKSPACES", str(len(list_workspaces())))
    newcomer = workspace_for_token(issue_token())
    with use_workspace(newcomer):
        with pytest.raises(UserError, match=r"workspaces, its limit \(TS_MAX_WORKSPACES=\d+\); try again later"):
            ingest_zip(shapes_zip)
        with pytest.raises(UserError, match="TS_MAX_WORKSPACES"):
            queue_run(TrainConfig(dataset="digits", mode="linear"))
    assert not (workspaces_dir() / newcomer).exists()  # refused before anything was written
    with use_workspace(old):  # a workspace the server holds already goes on writing
        assert ingest_zip(shapes_zip).is_dir()


def test_the_dataset_page_refuses_a_new_visitors_upload_when_the_server_is_full(monkeypatch, shapes_zip):
    with use_workspace(workspace_for_token(issue_token())):
        new_run("someone-else")
    monkeypatch.setenv("TS_MAX_WORKSPACES", str(len(list_workspaces())))
    at = open_app("pages/dataset.py", dataset="digits")
    at.file_uploader(key="zip_upload").set_value(("shapes.zip", shapes_zip.read_bytes(), "application/zip")).run()
    at.button(key="use_zip").click().run()
    assert not at.exception, at.exception
    assert any("TS_MAX_WORKSPACES" in e.value for e in at.error), [e.value for e in at.error]
    assert not (workspaces_dir() / workspace_for_token(_token(at))).exists()


def test_queued_jobs_across_workspaces_are_capped(monkeypatch):
    monkeypatch.setenv("TS_MAX_QUEUED_TOTAL", "1")
    config = TrainConfig(dataset="digits", mode="linear")
    pid_file = home() / "dispatcher.pid"
    stop_idle_dispatcher()  # one an earlier test's page started (the app's resident one) holds the lock
    with open(home() / "dispatcher.lock", "a") as lock:
        # Stand in for a busy dispatcher, so the queued job stays queued while we look.
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = pid_file.read_text() if pid_file.is_file() else None
        pid_file.write_text(str(os.getpid()))
        try:
            with use_workspace(workspace_for_token(issue_token())):
                first = new_run("first")
                first.write_config(config.to_dict())
                submit(first)  # one visitor's job: the server's one slot
            try:
                with use_workspace(workspace_for_token(issue_token())), \
                        pytest.raises(UserError, match=r"server already has 1 training jobs .*TS_MAX_QUEUED_TOTAL=1"):
                    check_can_queue(config)
            finally:
                cancel(first)
        finally:
            if before is None:
                pid_file.unlink(missing_ok=True)
            else:
                pid_file.write_text(before)


def test_a_hosted_server_without_password_or_login_says_it_is_open(monkeypatch):
    monkeypatch.delenv("TS_PASSWORD", raising=False)
    assert "open server" in (open_server_warning({}) or "")
    assert open_server_warning({"access": {"password": "x"}}) is None
    assert open_server_warning({"auth": {"client_id": "x"}}) is None
    monkeypatch.setenv("TS_PASSWORD", "pw")
    assert open_server_warning({}) is None
    monkeypatch.delenv("TS_PROFILE")
    monkeypatch.delenv("TS_PASSWORD")
    assert open_server_warning({}) is None  # local use is not a server


# -------------------------------------------------------------- 7: no workspace fixation


def test_a_link_with_a_token_the_server_never_issued_opens_a_new_workspace():
    planted = new_token()  # well-formed, but never issued here
    assert not known_token(planted)
    at = open_app(ws=planted)
    assert _token(at) != planted and token_issued(_token(at))
    assert any("not one this server gave out" in w.value for w in at.warning)
    assert not (workspaces_dir() / workspace_for_token(planted)).exists()
    forged = planted[:32] + "A" * 22  # the shape of an issued token, with a made-up signature
    assert not token_issued(forged) and not known_token(forged)


def test_an_issued_token_and_a_used_one_reopen_their_workspace():
    issued = issue_token()
    assert _token(open_app(ws=issued)) == issued  # before anything was written (no folder yet)
    legacy = new_token()  # a token from before signing, whose workspace holds files
    with use_workspace(workspace_for_token(legacy)):
        new_run("kept")
    assert known_token(legacy) and _token(open_app(ws=legacy)) == legacy


# -------------------------------------------------------------- 10: TTL clean-up that loses nothing


def test_ttl_keeps_the_upload_and_caches_a_queued_run_needs(shapes_zip, tmp_path):
    wid = workspace_for_token(issue_token())
    with use_workspace(wid):
        needed = ingest_zip(shapes_zip)
        other = make_shapes_dataset(tmp_path / "other", per_class=2)
        unused = ingest_zip(Path(shutil.make_archive(str(tmp_path / "other"), "zip", other)))
        queued = new_run("queued")
        queued.write_config(TrainConfig(dataset=str(needed), mode="linear").to_dict())
        queued.update_status(state="queued", stage="queued")
        (cache_dir() / "features").mkdir(parents=True)
        (cache_dir() / "features" / "f.npz").write_bytes(b"features the job reads")
        done = new_run("done")
        done.write_config(TrainConfig(dataset=str(unused), mode="linear").to_dict())
        done.update_status(state="done", stage="done")
    touch(wid, now=time.time() - 30 * DAY)
    report = remove_idle_workspaces(ttl_days=14)
    assert next(e for e in report if e["workspace"] == wid[:8])["kept"] == [queued.id]
    assert queued.path.is_dir() and needed.is_dir() and any(needed.rglob("*.png"))
    assert (workspaces_dir() / wid / "cache" / "features" / "f.npz").is_file()
    assert not done.path.exists() and not unused.exists()


def test_a_run_queued_while_the_clean_up_waits_is_kept():
    wid = workspace_for_token(issue_token())
    with use_workspace(wid):
        new_run("old")
    touch(wid, now=time.time() - 30 * DAY)
    cleaner = threading.Thread(target=remove_idle_workspaces, kwargs={"ttl_days": 14})
    with queue_lock(), use_workspace(wid):  # what queue_run holds from the run's folder to its queue row
        run = new_run("submitted-now")
        cleaner.start()
        time.sleep(0.5)  # without the lock, the clean-up removes the half-made run here
        run.write_config(TrainConfig(dataset="digits", mode="linear").to_dict())
        run.update_status(state="queued", stage="queued")
    cleaner.join(timeout=30)
    assert run.path.is_dir() and Run(run.path).config()["dataset"] == "digits"


# -------------------------------------------------------------- 11: secrets and errors


def test_no_background_process_sees_the_password(monkeypatch, tmp_path):
    monkeypatch.setenv("TS_PASSWORD", "the server's secret")
    monkeypatch.setenv("TS_SECRET_ENV", "OPERATOR_TOKEN")
    monkeypatch.setenv("OPERATOR_TOKEN", "another secret")
    log = tmp_path / "child.log"
    probe = "import os; print(os.environ.get('TS_PASSWORD'), os.environ.get('OPERATOR_TOKEN'), sep='|')"
    spawn([sys.executable, "-c", probe], log).wait(timeout=60)  # how every task, job and dispatcher starts
    assert log.read_text().strip() == "None|None"
    assert "TS_PASSWORD" not in child_env() and "OPERATOR_TOKEN" not in child_env()


def test_secrets_file_is_never_committed():
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "check-ignore", ".streamlit/secrets.toml"], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.strip() == ".streamlit/secrets.toml"


def test_hosted_visitors_get_no_error_details(monkeypatch):
    open_app()
    assert st_config.get_option("client.showErrorDetails") == "none"
    monkeypatch.delenv("TS_PROFILE")
    open_app()
    assert st_config.get_option("client.showErrorDetails") != "none"


def test_password_guesses_are_slowed_and_counted_per_session(monkeypatch):
    monkeypatch.setenv("TS_PASSWORD", "correct horse")
    monkeypatch.setenv("TS_PASSWORD_DELAY_S", "60")
    at = open_app()
    at.text_input(key="access_password").input("guess 1").run()
    at.text_input(key="access_password").input("correct horse").run()  # too soon after a wrong one
    assert any("wait" in e.value and "before the next try" in e.value for e in at.error)
    assert "ws" not in at.query_params and not at.sidebar.markdown

    monkeypatch.setenv("TS_PASSWORD_DELAY_S", "0.001")
    monkeypatch.setenv("TS_PASSWORD_ATTEMPTS", "2")
    at = open_app()
    for guess in ("guess 1", "guess 2"):
        at.text_input(key="access_password").input(guess).run()
        time.sleep(0.01)
    at.text_input(key="access_password").input("correct horse").run()
    assert any("2 wrong passwords in this session" in e.value and "TS_PASSWORD_ATTEMPTS" in e.value
               for e in at.error)
    assert not at.sidebar.markdown


def test_password_guesses_are_capped_server_wide(monkeypatch):
    monkeypatch.setenv("TS_PASSWORD_ATTEMPTS_SERVER", "3")
    monkeypatch.setenv("TS_PASSWORD_DELAY_S", "0.001")
    guard, now = PasswordGuard(), time.time()
    for _ in range(3):  # a script opening a fresh session for each guess
        assert guard.attempt({}, "guess", "secret", now=now) is False
    with pytest.raises(UserError, match=r"3 wrong passwords in the last 15 minutes \(TS_PASSWORD_ATTEMPTS_SERVER\)"):
        guard.attempt({}, "secret", "secret", now=now + 1)
    assert guard.attempt({}, "secret", "secret", now=now + 16 * 60)  # the window has passed


def test_a_login_identity_without_subject_or_email_is_refused():
    with pytest.raises(UserError, match="neither an account id"):
        workspace_for_identity("https://issuer", None, "")
    assert workspace_for_identity("https://issuer", "", "a@example.org") != workspace_for_identity(
        "https://issuer", "", "b@example.org")


def test_a_newline_in_a_visitors_value_cannot_forge_an_audit_line(caplog):
    forged = "mobilenet_v2\n2026-01-01 00:00:00 transfer_studio workspace=deadbeef share run=x"
    with use_workspace(workspace_for_token(issue_token())), caplog.at_level(logging.INFO, logger="transfer_studio"):
        check_can_queue(TrainConfig(dataset="digits", mode="linear", backbone=forged))
    lines = [r.getMessage() for r in caplog.records if r.name == "transfer_studio"]
    assert len(lines) == 1 and "\n" not in lines[0] and repr(forged) in lines[0]
    assert " mode=linear " in lines[0]  # plain values stay bare


def test_runs_dir_reads_without_creating():
    wid = workspace_for_token(issue_token())
    with use_workspace(wid):
        assert uploaded_datasets() == [] and not runs_dir().exists() and not datasets_dir().exists()
    assert not (workspaces_dir() / wid).exists()


def test_a_visitor_who_opened_someone_elses_link_can_start_their_own_workspace():
    sender = issue_token()
    with use_workspace(workspace_for_token(sender)):
        theirs = new_run("the-senders")
        theirs.write_config(TrainConfig(dataset="digits", mode="linear").to_dict())
        theirs.update_status(state="done", stage="done")
    assert list(open_app("pages/runs.py", ws=sender).dataframe[0].value["run"]) == [theirs.id]
    at = open_app(ws=sender)
    assert _token(at) == sender
    at.button(key="new_workspace").click().run()
    mine = _token(at)
    assert mine != sender and token_issued(mine)
    at.switch_page("pages/runs.py").run()
    assert not at.exception, at.exception
    assert not at.dataframe and any("No runs yet" in i.value for i in at.info)
