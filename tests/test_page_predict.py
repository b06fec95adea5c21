"""Predict page: upload images to a trained, exported run and see its top-k classes."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
from streamlit.testing.v1 import AppTest

from conftest import draw_shape
from engine.export.inference import get_classifier

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "predict.py")
TIMEOUT = 60


def _png(kind: str, seed: int) -> bytes:
    buf = io.BytesIO()
    draw_shape(kind, np.random.default_rng(seed)).save(buf, format="PNG")
    return buf.getvalue()


def _page(run_id: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception, at.exception
    return at


def test_upload_shows_top_k_from_the_onnx_model(trained_run):
    at = _page(trained_run.id)
    assert at.selectbox(key="predict_run").value == trained_run.id
    images = [("circle.png", _png("circle", 7), "image/png"), ("square.png", _png("square", 8), "image/png")]
    at.file_uploader(key="predict_uploads").set_value(images).run()
    assert not at.exception, at.exception
    assert not at.error

    table = at.dataframe[0].value
    assert list(table["file"]) == ["circle.png", "square.png"]
    expected = get_classifier(trained_run.onnx_file).predict([io.BytesIO(b) for _, b, _ in images], top_k=3)
    assert list(table["prediction"]) == [r["top_k"][0]["class"] for r in expected]
    np.testing.assert_allclose(table["probability"], [r["top_k"][0]["probability"] for r in expected], rtol=1e-5)
    assert len(at.get("image")) == 2  # a gallery: one picture per image
    assert table["answer"].tolist() == table["prediction"].tolist()  # threshold 0: never "unsure"
    assert (table["ms"] > 0).all()


def test_non_image_gets_its_own_error_and_others_still_predict(trained_run):
    at = _page(trained_run.id)
    at.file_uploader(key="predict_uploads").set_value([
        ("notes.txt", b"this is not an image", "text/plain"),
        ("truncated.png", _png("triangle", 1)[:60], "image/png"),
        ("triangle.png", _png("triangle", 2), "image/png"),
    ]).run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("**notes.txt**") and "not an image" in e for e in errors), errors
    assert any(e.startswith("**truncated.png**") for e in errors), errors
    assert list(at.dataframe[0].value["file"]) == ["triangle.png"]


def test_top_k_setting_and_model_download(trained_run):
    at = _page(trained_run.id)
    next(w for w in at.number_input if w.label == "Top-k classes").set_value(2)
    at.file_uploader(key="predict_uploads").set_value([("c.png", _png("circle", 3), "image/png")]).run()
    assert not at.exception
    assert at.dataframe[0].value["top-2"].iloc[0].count(",") == 1
    # The offered model file is the run's export and loads in onnxruntime.
    assert any(b.proto.label == "Download model.onnx" for b in at.get("download_button"))
    session = ort.InferenceSession(trained_run.onnx_file.read_bytes(), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "image"


def test_no_exported_run_says_what_to_do(tmp_path, monkeypatch):
    # An empty workspace: a fresh user on a fresh server.
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    assert any("No exported model yet" in i.value for i in at.info)
