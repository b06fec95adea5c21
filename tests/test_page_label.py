"""Label page: proposes pool images with the model's label, a class key labels one, confirming refits the probe
and the curve gains a point; undo takes the batch back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import SHAPES_CLASSES, draw_shape, make_shapes_dataset

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "label.py")


@pytest.fixture
def dataset_with_pool(tmp_path, monkeypatch):
    root = make_shapes_dataset(tmp_path / "shapes", per_class=10, seed=8, splits=True)
    rng = np.random.default_rng(8)
    (root / "unlabelled").mkdir()
    for i in range(8):
        draw_shape(SHAPES_CLASSES[i % 3], rng).save(root / "unlabelled" / f"u{i}.png")
    monkeypatch.setenv("TS_DATA_ROOTS", str(tmp_path))
    return root


@pytest.mark.slow
def test_label_page_labels_by_key_refits_and_draws_the_curve(dataset_with_pool):
    from engine.data.dataset import load_dataset
    from engine.dataloop.pool import LabelLoop, resolve_pool

    dataset = load_dataset(dataset_with_pool)
    LabelLoop(dataset, resolve_pool(dataset)).suggest(1)  # the features the page's background task computes
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["dataset"] = str(dataset_with_pool)
    at.run()
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "model:" in captions and "u" in captions
    classes = sorted(SHAPES_CLASSES)
    at.button(key="label_class_1").click().run()  # key "2": the second class
    assert not at.exception, at.exception
    assert f"you: {classes[1]}" in " ".join(c.value for c in at.caption)
    at.button(key="label_keep").click().run()
    at.button(key="label_undo").click().run()  # the keep is taken back: one label left
    confirm = at.button(key="label_confirm")
    assert confirm.label.startswith("Confirm 1 label")
    confirm.click().run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 1
    loop = LabelLoop(load_dataset(dataset_with_pool), dataset_with_pool / "unlabelled")
    assert len(loop.curve()) == 2 and loop.curve()[1]["pool_labels"] == 1
    assert list(loop.confirmed().values()) == [classes[1]]
    at.button(key="label_undo_batch").click().run()
    assert not at.exception, at.exception
    assert loop.confirmed() == {} and len(loop.curve()) == 1
