"""Share links (hosted profile): the owner shares a run from the Predict page; the link opens that run's
results and model demo, nothing else, predicts on a real image, and stops working when withdrawn."""
from __future__ import annotations

import io
import shutil
import time

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import draw_shape, open_app
from engine.export.inference import get_classifier
from engine.hosting.sharing import share_token, unshare_run
from engine.hosting.cleanup import remove_idle_workspaces
from engine.hosting.workspaces import new_token, touch, workspace_for_token
from engine.runs import Run, new_run
from engine.training.config import TrainConfig
from engine.workspace import runs_dir, use_workspace



def _png(kind: str, seed: int) -> bytes:
    buf = io.BytesIO()
    draw_shape(kind, np.random.default_rng(seed)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def owned_run(monkeypatch, trained_run):
    """The session's trained, exported run, copied into a visitor's workspace, and a second, private run."""
    monkeypatch.setenv("TS_PROFILE", "hosted")
    token = new_token()
    with use_workspace(workspace_for_token(token)):
        run = Run(shutil.copytree(trained_run.path, runs_dir() / trained_run.id))
        private = new_run("private")
        private.write_config(TrainConfig(dataset="digits").to_dict())
    return token, run, private


def _all_text(at: AppTest) -> str:
    kinds = ("title", "caption", "markdown", "subheader", "metric", "error", "code", "warning", "info")
    return "\n".join(str(getattr(e, "value", "")) + str(getattr(e, "label", "")) for k in kinds for e in at.get(k))


def test_share_link_opens_the_demo_of_that_run_only(owned_run):
    token, run, private = owned_run
    owner = open_app(ws=token)
    owner.switch_page("pages/predict.py").run()
    owner.button(key="share_create").click().run()
    assert not owner.exception, owner.exception
    share = share_token(run)
    assert share and any(f"?share={share}" in c.value for c in owner.code)

    demo = open_app(share=share)
    assert [t.value for t in demo.title] == ["Model demo"]
    assert "ws" not in demo.query_params and not demo.sidebar.markdown  # no workspace, no navigation
    text = _all_text(demo)
    assert private.id not in text and token not in text and "digits" not in text
    assert "accuracy" in text.lower()  # the run's results

    demo.file_uploader(key="demo_upload").set_value(("circle.png", _png("circle", 11), "image/png")).run()
    assert not demo.exception, demo.exception
    expected = get_classifier(run.onnx_file).predict([io.BytesIO(_png("circle", 11))], top_k=1)[0]["top_k"][0]
    assert demo.subheader[0].value.startswith(f"{expected['class']} (")

    # The idle-workspace clean-up keeps a shared run; the private one goes.
    touch(workspace_for_token(token), now=time.time() - 365 * 86400)
    remove_idle_workspaces()
    assert run.path.is_dir() and not private.path.exists()
    assert [t.value for t in open_app(share=share).title] == ["Model demo"]

    unshare_run(run)
    withdrawn = open_app(share=share)
    assert any("not valid or was withdrawn" in e.value for e in withdrawn.error)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "x" * 32, "", "%2e%2e%2f" * 4])
def test_a_bad_share_link_says_so_in_one_line(bad, monkeypatch):
    monkeypatch.setenv("TS_PROFILE", "hosted")
    at = open_app(share=bad)
    assert [e.value for e in at.error] == ["this share link is not valid or was withdrawn; ask its owner for a new one"]
    assert not at.file_uploader and not at.sidebar.markdown
