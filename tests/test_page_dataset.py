"""Dataset page: built-in default, zip upload (good and malicious), URL validation, val fraction."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from conftest import draw_shape
from engine.workspace import datasets_dir

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "dataset.py")
TIMEOUT = 60


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _png(kind: str, seed: int) -> bytes:
    buf = io.BytesIO()
    draw_shape(kind, np.random.default_rng(seed), size=32).save(buf, format="PNG")
    return buf.getvalue()


def _page(dataset: str | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    if dataset is not None:
        at.query_params["dataset"] = dataset
    at.run()
    assert not at.exception, at.exception
    return at


def _text(at: AppTest) -> str:
    return " ".join(str(m.value) for m in [*at.markdown, *at.warning, *at.error, *at.info, *at.success])


def test_builtin_dataset_shows_health_sections_and_keeps_val_fraction():
    at = _page("skimage-textures")
    assert not at.error
    headers = [h.value for h in at.header]
    for section in ("Class balance", "Split", "Images", "Unreadable files", "Duplicates", "Gallery",
                    "Embedding map"):
        assert section in headers
    assert at.metric[0].value == "90"
    assert "stratified split with seed 0" in _text(at)
    at.slider[0].set_value(0.3).run()
    assert not at.exception
    assert at.session_state["val_fraction"] == 0.3
    assert "train: **63**" in _text(at)


def test_dataset_from_url_outside_allowed_roots_falls_back_with_a_warning():
    at = _page("/etc")
    assert any("not a built-in dataset" in w.value for w in at.warning)
    assert at.query_params["dataset"] == "fashion-mnist"


def test_zip_upload_is_extracted_and_used():
    at = _page("skimage-textures")
    data = _zip_bytes({f"{k}/{k}_{i}.png": _png(k, i) for k in ("circle", "square") for i in range(5)})
    at.file_uploader(key="zip_upload").set_value(("shapes.zip", data, "application/zip")).run()
    at.button(key="use_zip").click().run()
    assert not at.exception and not at.error
    assert at.metric[0].value == "10"
    spec = Path(at.session_state["dataset"])
    assert spec.parent == datasets_dir() and spec.name.startswith("shapes-")
    assert not list((datasets_dir() / ".uploads").iterdir())  # temp upload removed


def test_malicious_zip_upload_shows_an_error_and_writes_nothing():
    at = _page("skimage-textures")
    before = sorted(p.name for p in datasets_dir().iterdir())
    data = _zip_bytes({"circle/a.png": _png("circle", 0), "../../evil.png": b"x"})
    at.file_uploader(key="zip_upload").set_value(("evil.zip", data, "application/zip")).run()
    at.button(key="use_zip").click().run()
    assert not at.exception
    assert any("leaves its folder" in e.value for e in at.error)
    assert sorted(p.name for p in datasets_dir().iterdir()) == before
    assert not list((datasets_dir() / ".uploads").iterdir())
    assert at.metric[0].value == "90"  # still showing the previous dataset
