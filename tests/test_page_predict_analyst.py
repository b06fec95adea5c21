"""Predict page for an analyst: a zip in a batch, the "unsure" threshold and its validation curve, the OOD flag."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import draw_shape
from engine.evaluation import evaluate_run, load_evaluation, threshold_point

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "predict.py")

pytestmark = pytest.mark.slow


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def evaluated(trained_run):
    if load_evaluation(trained_run.path) is None:
        evaluate_run(trained_run.path, n_resamples=200)
    return trained_run


def test_zip_threshold_curve_and_ood_flag(evaluated):
    import skimage.data

    rng = np.random.default_rng(11)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("shapes/circle.png", _png(draw_shape("circle", rng)))
        z.writestr("shapes/readme.md", "not an image")
    files = [("batch.zip", archive.getvalue(), "application/zip"),
             ("astronaut.png", _png(Image.fromarray(skimage.data.astronaut())), "image/png")]
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["run"] = evaluated.id
    at.run()
    at.slider(key="predict_threshold").set_value(0.5).run()
    assert not at.exception, at.exception
    curve = load_evaluation(evaluated.path).summary["threshold_curve"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Coverage (images answered)"] == f"{threshold_point(curve, 0.5)['coverage']:.3f}"
    assert len(at.get("plotly_chart")) == 1  # the precision/coverage curve

    at.file_uploader(key="predict_uploads").set_value(files).run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("**batch.zip/shapes/readme.md**")
    table = at.dataframe[0].value.set_index("file")
    assert list(table.index) == ["batch.zip/shapes/circle.png", "astronaut.png"]
    # A photo of a person against a model of drawn shapes: unlike anything it was trained on.
    assert bool(table.loc["astronaut.png", "unlike_training"])
    assert not bool(table.loc["batch.zip/shapes/circle.png", "unlike_training"])
    for _, row in table.iterrows():
        assert row["answer"] == ("unsure" if row["probability"] < 0.5 else row["prediction"])
    assert any(b.proto.label == "Download predictions (CSV)" for b in at.get("download_button"))
