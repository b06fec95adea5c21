"""The walking skeleton in a real browser: `streamlit run`, train, watch, predict, download the ONNX.

Drives Debian's chromium with Playwright, as streamlit's own e2e suite does.
Screenshots of every page go to $TS_SHOTS_DIR (default /tmp/ts-shots).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import need_browser

from tests.load.harness import CHROMIUM, CHROMIUM_ARGS, IDLE, serve


pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("TS_SHOTS_DIR", "/tmp/ts-shots"))


@pytest.fixture()
def server(workspace_home):
    need_browser()
    env = os.environ.copy() | {"TRANSFER_STUDIO_HOME": str(workspace_home)}
    with serve(ROOT / "streamlit_app.py", env, workspace_home / f"streamlit-{os.getpid()}.log", timeout=90) as running:
        yield running.url


def _settle(page, timeout_ms: int = 90_000) -> None:
    # A rerun may start a moment after the action; give it that moment, then wait for it to end.
    page.wait_for_timeout(300)
    page.wait_for_selector(IDLE, timeout=timeout_ms)
    assert page.locator("[data-testid='stException']").count() == 0, page.locator(
        "[data-testid='stException']").first.inner_text()


def _goto(page, title: str) -> None:
    page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=title).click()
    _settle(page)
    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=60_000)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1500)  # plotly draws after the script run ends
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    _settle(page)


def test_train_predict_download_in_browser(server, workspace_home):
    import onnxruntime as ort
    from playwright.sync_api import sync_playwright


    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1800}, accept_downloads=True)
            page.goto(server, timeout=90_000)
            _settle(page, 120_000)
            sidebar = page.locator("[data-testid='stSidebar']")
            assert "fashion-mnist" in sidebar.inner_text() and "mobilenet_v2" in sidebar.inner_text()
            _shot(page, "1-dataset")

            _goto(page, "Backbone")
            page.get_by_text("Which backbone suits this dataset?").wait_for(timeout=60_000)
            assert page.get_by_role("button", name="Run sweep").count() == 1  # the probe sweep is offered
            _shot(page, "2-backbone")

            _goto(page, "Train")
            _set_number(page, "Image size (px)", 64)  # the linear probe: no epochs to set
            page.get_by_role("button", name="Start training").click()
            _settle(page)
            # Live progress, unless the probe (one converged fit) was already done by the first redraw.
            page.locator("[data-testid='stProgress']").first.or_(
                page.get_by_text("Evaluation on the validation split")).first.wait_for(timeout=60_000)
            _shot(page, "3a-train-live")
            assert "?run=" in page.url or "&run=" in page.url  # a refresh reopens this run
            page.get_by_text("Evaluation on the validation split").wait_for(timeout=300_000)
            _settle(page)
            # A probe has no epochs: its cross-validation curve over C, and the confusion matrix.
            assert page.locator("[data-testid='stPlotlyChart']").count() == 2
            assert page.locator("code", has_text="done").count() >= 1
            assert "done" in sidebar.inner_text()
            _shot(page, "3-train")
            # The figures come first; the evaluation and export follow and the page says when they are in.
            page.get_by_text("Exported to ONNX and checked against PyTorch").wait_for(timeout=300_000)

            _goto(page, "Runs")
            _shot(page, "4-runs")

            # A real validation image of the built-in data, as a user would try.
            image = sorted((workspace_home / "datasets").glob("builtin-fashion-mnist/val/*/*.png"))[0]
            _goto(page, "Predict")
            page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(image))
            _settle(page)
            page.get_by_text("All predictions").wait_for(timeout=60_000)
            classes = [d.name for d in image.parent.parent.iterdir()]
            captions = " ".join(page.locator("[data-testid='stCaptionContainer']").all_inner_texts())
            assert any(c in captions for c in classes), captions  # the gallery names the predicted class
            # The run was evaluated when its training job ended: the OOD score is there.
            main = page.locator("[data-testid='stMain']").inner_text()
            assert "backbone features are farther from the training images" in main, main
            _shot(page, "5-predict")

            with page.expect_download(timeout=60_000) as download:
                page.get_by_role("button", name="Download model.onnx").click()
            onnx_path = download.value.path()
            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            logits = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 64, 64), np.float32)})[0]
            assert logits.shape == (1, 10)  # fashion-mnist's ten classes

            _goto(page, "Export")
            _shot(page, "6-export")
        finally:
            browser.close()
