"""The labelling loop in a real browser: `streamlit run`, the Label page, 20 images labelled with the keyboard,
confirmed, and the probe's curve gains a point (the probe on the dataset's own labels, then with the 20).

Drives Debian's chromium with Playwright, as tests/test_e2e_browser.py does. Small on purpose: a dataset of
drawn shapes (3 classes x 8 training and 8 validation images) and a pool of 24, so the page's background
task reads the pool's features in seconds.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from conftest import need_browser, SHAPES_CLASSES, draw_shape, make_shapes_dataset
from tests.load.harness import CHROMIUM, CHROMIUM_ARGS, IDLE, serve

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
POOL = 24
LABELLED = 20
SHOTS = Path(os.environ.get("TS_SHOTS_DIR", "/tmp/ts-shots"))


@pytest.fixture()
def dataset_with_pool(tmp_path) -> Path:
    root = make_shapes_dataset(tmp_path / "shapes", per_class=8, seed=5, splits=True)
    rng = np.random.default_rng(5)
    (root / "unlabelled").mkdir()
    for i in range(POOL):  # the true class is in the name: the test answers as an analyst who looks would
        shape = SHAPES_CLASSES[i % len(SHAPES_CLASSES)]
        draw_shape(shape, rng).save(root / "unlabelled" / f"u{i:02d}-{shape}.png")
    return root


@pytest.fixture()
def server(workspace_home, dataset_with_pool):
    need_browser()
    env = os.environ.copy() | {"TRANSFER_STUDIO_HOME": str(workspace_home),
                               "TS_DATA_ROOTS": str(dataset_with_pool.parent)}
    with serve(ROOT / "streamlit_app.py", env, workspace_home / f"streamlit-label-{os.getpid()}.log",
               timeout=90) as running:
        yield running.url


def _settle(page, timeout_ms: int = 90_000) -> None:
    page.wait_for_timeout(300)  # a rerun may start a moment after the key or click
    page.wait_for_selector(IDLE, timeout=timeout_ms)
    errors = page.locator("[data-testid='stException']")
    assert errors.count() == 0, errors.first.inner_text()


def _curve_points(page, drawn: bool = True) -> int:
    """Markers drawn on the page's curve (``drawn=False``: 0 when there is no chart now)."""
    chart = page.locator("[data-testid='stPlotlyChart']")
    if not drawn and chart.count() == 0:
        return 0
    chart.first.wait_for(timeout=60_000)
    chart.first.scroll_into_view_if_needed()
    points = chart.first.locator(".scatterlayer .point")
    points.first.wait_for(timeout=30_000)  # plotly draws after the script run ends
    return points.count()


def _current_image(page, previous: str | None = None) -> str:
    """The pool file the page asks about now: its caption carries the ▶ marker.

    After a key press the script reruns and redraws the grid caption by caption, so until the run ends the
    marker may still sit on the image just labelled (or on none): read it once the page is idle and the marker
    has left ``previous``, or a key meant for a stale name would label the next image.
    """
    for _ in range(150):
        _settle(page)
        captions = page.locator("[data-testid='stCaptionContainer']").all_inner_texts()
        marked = [c.split("\n")[0][2:].strip() for c in captions if c.startswith("▶")]
        if len(marked) == 1 and marked[0] != previous:
            return marked[0]
        page.wait_for_timeout(200)
    raise AssertionError(f"the marker did not move on from {previous!r}: {marked}")


def test_label_twenty_images_by_keyboard_and_the_curve_gains_a_point(server, dataset_with_pool):
    from playwright.sync_api import sync_playwright

    from engine.data.dataset import load_dataset
    from engine.dataloop.pool import LabelLoop

    classes = load_dataset(dataset_with_pool).classes  # the page's key order: 1, 2, 3
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1600})
            page.goto(f"{server}/label?dataset={quote(str(dataset_with_pool))}", timeout=90_000)
            _settle(page, 120_000)
            page.get_by_role("heading", name="Label", exact=True).first.wait_for(timeout=60_000)
            # The pool's features come from a background task; the page polls until they are there.
            page.get_by_text("Image 1 of").wait_for(timeout=180_000)
            _settle(page)
            box = page.get_by_label("Images per batch", exact=True)
            box.fill(str(LABELLED))
            box.press("Enter")
            _settle(page)
            page.get_by_role("button", name="Suggest the next batch").click()
            _settle(page)
            page.get_by_text(f"Image 1 of {LABELLED}").wait_for(timeout=30_000)
            before = _curve_points(page, drawn=False)
            assert before == 0 and page.get_by_text("The curve starts with the first confirmed batch").count() == 1
            page.locator("[data-testid='stMain'] h1").first.click()  # keys go to the page, not the number box
            answers, name = {}, None
            for n in range(LABELLED):
                name = _current_image(page, previous=name)
                shape = re.search(r"-(\w+)\.png$", name).group(1)
                answers[name] = shape
                page.keyboard.press(str(classes.index(shape) + 1))
                _settle(page)
                if n < LABELLED - 1:
                    page.get_by_text(f"Image {n + 2} of {LABELLED}").wait_for(timeout=30_000)
            confirm = page.get_by_role("button", name=f"Confirm {LABELLED} label(s) and refit")
            confirm.click()
            _settle(page, 120_000)
            page.get_by_text(f"{LABELLED} pool images labelled").wait_for(timeout=60_000)
            # The curve: the probe on the dataset's own labels, then the point the 20 new labels gained.
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "label-confirmed.png"), full_page=True)
            assert _curve_points(page) == 2
            page.screenshot(path=str(SHOTS / "label-curve.png"),
                            full_page=True)
        finally:
            browser.close()
    loop = LabelLoop(load_dataset(dataset_with_pool), dataset_with_pool / "unlabelled")
    assert loop.confirmed() == answers  # every key press became the label of the image it was pressed on
    curve = loop.curve()
    assert len(curve) == 2 and curve[1]["pool_labels"] == LABELLED
    assert curve[1]["labels"] == curve[0]["labels"] + LABELLED
