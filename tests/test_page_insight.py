"""Insight page: draws a real engine result (curve, stages, domain, gain, advice); the Train page shows the advice."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import make_shapes_dataset

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stored_insight(tmp_path_factory):
    """A real insight of a small drawn dataset, stored where the page looks for the default dataset's."""
    from engine.data.builtin import DEFAULT_DATASET
    from engine.insight import compute_insight, insight_folder
    from engine.workspace import write_json_atomic

    data = make_shapes_dataset(tmp_path_factory.mktemp("insight-page"), per_class=12, splits=True)
    result = compute_insight(str(data), "mobilenet_v2", image_size=32, draws=2, scratch_sizes=0,
                             stage_per_class=5, domain_per_class=2, feature_engine="torch")
    folder = insight_folder(DEFAULT_DATASET, "mobilenet_v2")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "result.json", result)
    yield result
    (folder / "result.json").unlink()


def test_insight_page_draws_all_five_parts(stored_insight):
    at = AppTest.from_file(str(ROOT / "pages" / "insight.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert [s.value for s in at.subheader][:1] == ["Advice"]
    assert any(stored_insight["advice"][0] in i.value for i in at.info)
    titles = " ".join(s.value for s in at.subheader)
    for part in ("labelled images", "layers transfer", "pretraining data", "transfer gain"):
        assert part in titles
    assert len(at.dataframe) >= 2  # the curve and the ImageNet mapping
    assert any("CI" in c.value for c in at.caption)  # the distance says how uncertain it is
    at.button(key="insight_start")  # the background task is offered


def test_train_page_shows_the_advice(stored_insight):
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert any(i.value.startswith("**Insight:**") for i in at.info)
