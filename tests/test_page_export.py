"""The export page: parity per variant, downloads only behind a passing fp32 gate, export from the page."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from onnx import numpy_helper
import onnx
from streamlit.testing.v1 import AppTest

from engine.export import check_parity
from engine.workflow import export_job_state
from engine.runs import Run
from engine.workspace import runs_dir

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "export.py")


@pytest.fixture
def page_run(exported_variants_run, request):
    """A copy of the exported run under runs/ (where the page looks), removed afterwards."""
    dest = runs_dir() / f"pageexport-{request.node.name[:30].replace('[', '-').replace(']', '')}"
    shutil.copytree(exported_variants_run.path, dest)
    yield Run(dest)
    shutil.rmtree(dest, ignore_errors=True)


def _open(run: Run | None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    if run is not None:
        at.session_state["run"] = run.id
    return at.run()


def test_without_a_run_the_page_says_what_to_do():
    at = _open(None)
    assert not at.exception
    assert "Pick or train a run first" in at.info[0].value


def test_passing_export_shows_each_variant_and_offers_downloads(page_run):
    at = _open(page_run)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["variant"]) == ["fp32", "fp32-uint8in", "fp16", "int8"]
    assert list(table["result"]) == ["passed", "passed", "reported", "reported"]
    labels = [b.label for b in at.get("download_button")]
    assert any(label.startswith("Download bundle") for label in labels)
    assert {"model.onnx", "model.int8.onnx", "model.fp16.onnx", "model.uint8in.onnx"} <= set(labels)


def test_failing_fp32_gate_blocks_downloads_with_the_reason(page_run):
    model = onnx.load(str(page_run.onnx_file))
    (head,) = [t for t in model.graph.initializer if len(t.dims) == 2]
    head.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(head) * 1.5, head.name))
    onnx.save(model, str(page_run.onnx_file))
    check_parity(page_run.path)
    at = _open(page_run)
    assert not at.exception
    assert "Download blocked" in at.error[0].value and "disagrees with PyTorch" in at.error[0].value
    labels = [b.label for b in at.get("download_button")]
    assert not any(label.startswith("Download bundle") or label.endswith(".onnx") for label in labels)


@pytest.mark.slow
def test_export_from_the_page(page_run):
    shutil.rmtree(page_run.export_dir)
    at = _open(page_run)
    assert "not been exported" in at.info[0].value
    at.multiselect[0].set_value(["fp32", "int8"])
    at.get("form_submit_button")[0].click()
    at.run()
    # The export runs as its own process; the page shows its progress until it finishes.
    assert not at.exception and "Exporting fp32, int8" in at.info[0].value
    deadline = time.time() + 600
    while export_job_state(page_run.path)["state"] == "running" and time.time() < deadline:
        time.sleep(1)
    assert export_job_state(page_run.path)["state"] == "done"
    at.run()
    assert not at.exception and not at.error
    assert list(at.dataframe[0].value["variant"]) == ["fp32", "int8"]
    assert (page_run.export_dir / "model.int8.onnx").is_file()


def test_a_run_just_done_says_filling_in_until_its_own_export_has_passed(page_run):
    import os

    from engine.jobs.tasks import process_start

    parity = page_run.export_dir / "parity.json"
    kept = parity.read_bytes()
    parity.unlink()  # as right after training: the follow-up has not exported yet
    page_run.update_status(state="done", follow_up={"state": "running", "stage": "export", "message": "exporting",
                                                    "pid": os.getpid(), "pid_start": process_start(os.getpid())})
    at = _open(page_run)
    assert not at.exception
    assert any("Filling in" in i.value for i in at.info)
    assert not at.get("download_button")
    parity.write_bytes(kept)
    page_run.update_status(follow_up={"state": "done"})
    at = _open(page_run)
    assert not at.exception and not at.error
    assert list(at.dataframe[0].value["variant"])[0] == "fp32"
