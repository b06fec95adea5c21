"""Backbone page: the catalogue is listed, picking a backbone sets the current one, and the probe sweep
runs in the background, recommends one and makes it current in one click."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from streamlit.testing.v1 import AppTest

from engine.features.catalogue import backbone_catalogue

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60


def _page(**state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "backbones.py"), default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def test_lists_catalogue_with_mobilenet_available():
    at = _page()
    table = at.dataframe[0].value
    assert list(table["backbone"]) == [r["backbone"] for r in backbone_catalogue()]
    row = table.set_index("backbone").loc["mobilenet_v2"]
    assert bool(row["available"]) is True
    assert row["params_m"] > 0 and row["imagenet_top1"] > 50
    # the default pick is the offline backbone, and it says it will be used
    assert at.selectbox(key="backbone_pick").value == "mobilenet_v2"
    assert at.session_state["backbone"] == "mobilenet_v2"
    assert any("mobilenet_v2" in s.value for s in at.success)
    assert {"torchvision", "efficientnet_lite", "timm"} <= set(table["family"])
    assert table.set_index("backbone").loc["dinov2_vits14", "imagenet_top1"] > 80


def test_picking_changes_current_backbone_and_url():
    at = _page()
    at.selectbox(key="backbone_pick").set_value("efficientnet_lite0").run()
    assert not at.exception
    assert at.session_state["backbone"] == "efficientnet_lite0"
    assert at.query_params["backbone"] == "efficientnet_lite0"
    assert any("efficientnet_lite0" in s.value for s in at.success)


def test_unavailable_backbone_warns():
    missing = [r["backbone"] for r in backbone_catalogue() if not r["available"]]
    if not missing:
        pytest.skip("every backbone's weights are on this machine")
    at = _page()
    at.selectbox(key="backbone_pick").set_value(missing[0]).run()
    assert not at.exception
    assert any("not on this machine" in w.value for w in at.warning)
    assert not at.success


def test_sweep_in_background_recommends_and_one_click_makes_it_current(shapes_dir, tmp_path, monkeypatch):
    from timm_weights import TIMM_SMALL, supply_random_timm_weights

    monkeypatch.setenv("TS_DATA_ROOTS", str(shapes_dir.parent))
    monkeypatch.setenv("TS_WEIGHTS_DIR", str(tmp_path / "weights"))  # the sweep's process inherits it
    supply_random_timm_weights(tmp_path / "weights")  # a timm backbone that loads offline
    at = _page(dataset=str(shapes_dir))
    at.number_input(key="sweep_size").set_value(32).run()
    table = at.dataframe[0].value.set_index("backbone")
    assert bool(table.loc[TIMM_SMALL, "available"]) and table.loc[TIMM_SMALL, "weights_source"].startswith("loads now")
    at.multiselect(key="sweep_pick").set_value(["mobilenet_v2", TIMM_SMALL]).run()
    at.button(key="sweep_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    deadline = time.time() + 240
    while not any("best accuracy" in s.value.lower() for s in at.success) and time.time() < deadline:
        time.sleep(2)
        at.run()
        assert not at.error, [e.value for e in at.error]
    sentence = next(s.value for s in at.success if "best accuracy" in s.value.lower())
    assert "fastest within one point of the best" in sentence
    assert len(at.get("plotly_chart")) == 1
    assert not at.exception, at.exception
    sweep = at.dataframe[1].value  # after the catalogue
    assert set(sweep["backbone"]) == {"mobilenet_v2", TIMM_SMALL} and sweep["accuracy"].between(0, 100).all()
    best = sentence.split("Best accuracy: ")[1].split(" ")[0]
    at.button(key="use_best").click().run()
    assert at.session_state["backbone"] == best and at.query_params["backbone"] == best

    again = _page(dataset=str(shapes_dir))  # a refresh: the finished sweep is still there
    assert any("best accuracy" in s.value.lower() for s in again.success)
