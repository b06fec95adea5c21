"""Backbone page: the catalogue is listed and picking a backbone sets the current one."""
from __future__ import annotations

from pathlib import Path

import pytest

from streamlit.testing.v1 import AppTest

from engine.models import backbone_catalogue

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60


def _page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "backbones.py"), default_timeout=TIMEOUT)
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
    assert len(at.get("plotly_chart")) == 1


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
