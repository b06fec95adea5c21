"""The Evaluate page in a real browser: click a confusion-matrix cell, see its images, ask "Why?", see Grad-CAM.

Uses the session's trained shapes run (evaluated here) and the streamlit server of test_e2e_browser.
"""
from __future__ import annotations

import pytest

from test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, _settle, _shot, server  # noqa: F401  (server: a fixture)

pytestmark = pytest.mark.e2e


@pytest.fixture()
def evaluated_run(trained_run):
    from engine.evaluation import evaluate_run, load_evaluation

    if load_evaluation(trained_run.path) is None:
        evaluate_run(trained_run.path, n_resamples=200)
    return trained_run


def _cell_centre(page, row: int, col: int, n: int) -> tuple[float, float]:
    """Page coordinates of confusion cell (true row, predicted col); rows run top to bottom."""
    plot = page.locator("[data-testid='stPlotlyChart']").first.locator("g.heatmaplayer image").first
    box = plot.bounding_box()
    assert box, "the heatmap was not drawn"
    return box["x"] + (col + 0.5) * box["width"] / n, box["y"] + (row + 0.5) * box["height"] / n


def test_confusion_cell_gallery_and_activation_map_in_browser(server, evaluated_run):  # noqa: F811
    from playwright.sync_api import sync_playwright

    from engine.evaluation import load_evaluation

    ev = load_evaluation(evaluated_run.path)
    classes, counts = ev.classes, ev.summary["confusion"]["counts"]
    n = len(classes)
    # The page opens on the worst off-diagonal cell; click a diagonal cell that has images instead.
    row = next(i for i in range(n) if counts[i][i] > 0)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 2000})
            page.goto(server, timeout=90_000)  # the app's frame first: it registers the navigation
            _settle(page, 120_000)
            page.goto(f"{server}/evaluate?run={evaluated_run.id}", timeout=90_000)
            _settle(page, 120_000)
            assert evaluated_run.id in page.locator("[data-testid='stSidebar']").inner_text()
            page.get_by_role("heading", name="Evaluate", exact=True).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # plotly draws after the script run
            x, y = _cell_centre(page, row, row, n)
            page.mouse.click(x, y)
            _settle(page)
            title = f"True {classes[row]}, predicted {classes[row]}: {counts[row][row]} image(s)"
            page.get_by_role("heading", name=title).wait_for(timeout=60_000)
            gallery = page.locator(".st-key-eval_cell_gallery")
            assert gallery.locator("img").count() == counts[row][row]
            assert gallery.get_by_text(f"true {classes[row]}").count() >= 1
            _shot(page, "7a-evaluate-cell")

            gallery.get_by_role("button", name="Why?").first.click()
            _settle(page)
            panel = page.locator(".st-key-eval_cam_panel")
            panel.wait_for(timeout=60_000)
            # The image the model saw and its Grad-CAM for the predicted (= true, on the diagonal) class.
            assert panel.locator("img").count() == 2
            assert "Grad-CAM" in panel.inner_text() and classes[row] in panel.inner_text()
            _shot(page, "7-evaluate-activation-map")
        finally:
            browser.close()
