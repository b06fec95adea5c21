"""Issue 10, the engine: timm in the registry, supplied weights checked key by key, latency, the probe sweep.

Real models with weights the tests save from random initialisations (no download happens
here), real onnxruntime, small images (32 px).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from engine.errors import UserError
from engine.features.catalogue import backbone_catalogue
from engine.models import create_model, get_spec
from engine.models import availability
from engine.models.supplied import install_weights, supplied_file, weights_dir
from timm_weights import TIMM_SMALL, random_timm_state, supply_random_timm_weights


@pytest.fixture()
def own_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TS_WEIGHTS_DIR", str(tmp_path / "weights"))
    return tmp_path / "weights"


def test_catalogue_has_both_families_and_says_where_weights_go(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = {r["backbone"]: r for r in backbone_catalogue()}
    for name in ("dinov2_vits14", "dinov2_vitb14", "clip_vitb16", "convnextv2_tiny", "efficientnetv2_s", TIMM_SMALL):
        assert rows[name]["family"] == "timm" and rows[name]["imagenet_top1"] > 70
    assert rows["mobilenet_v2"]["family"] == "torchvision"
    assert rows["mobilenet_v2"]["weights_source"].startswith("loads now")
    spec = get_spec("dinov2_vits14")  # metadata from timm's pretrained_cfg
    assert spec.input_size == 518 and spec.interpolation == "bicubic" and spec.mean == (0.485, 0.456, 0.406)
    assert get_spec("clip_vitb16").mean[0] == pytest.approx(0.48145466)
    t0 = time.perf_counter()
    ok, words = availability(get_spec("dinov2_vitb14"))  # never waits on the hub
    assert time.perf_counter() - t0 < 5
    if not ok:
        assert words.startswith("not available offline: an operator can place the weights file in ")
        assert str(weights_dir() / "dinov2_vitb14.safetensors") in words
        with pytest.raises(UserError, match="not available offline"):
            create_model("dinov2_vitb14", 3, pretrained=True, image_size=28)


def test_torchvision_weights_file_checked_then_loaded(own_weights_dir, tmp_path):
    torch.manual_seed(0)
    from torchvision.models import resnet18

    state = resnet18(weights=None).state_dict()
    source = tmp_path / "resnet18.pth"
    torch.save(state, source)
    bad = dict(state)
    bad["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    del bad["layer4.1.bn2.bias"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(UserError) as err:
        install_weights("resnet18", tmp_path / "bad.pth")
    message = str(err.value)
    assert "do not fit 'resnet18'" in message and "layer4.1.bn2.bias" in message
    assert "layer1.0.conv1.weight (3, 3, 3, 3) vs (64, 64, 3, 3)" in message and "\n" not in message
    assert supplied_file("resnet18") is None
    torch.save({"not": "weights"}, tmp_path / "junk.pth")
    with pytest.raises(UserError, match="holds no state dict"):
        install_weights("resnet18", tmp_path / "junk.pth")

    assert install_weights("resnet18", source) == own_weights_dir / "resnet18.safetensors"
    ok, words = availability(get_spec("resnet18"))
    assert ok and words == "loads now (supplied weights file)"
    model = create_model("resnet18", 4, pretrained=True)
    assert torch.equal(model.backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert isinstance(model.backbone.fc, nn.Identity)


def test_timm_weights_file_through_timm_stages_and_features(own_weights_dir, tmp_path):
    from safetensors.torch import save_file

    from engine.features.extract import backbone_key, feature_extractor
    from engine.training.freeze import apply_freeze_policy
    from engine.device import resolve_device

    key_before = backbone_key(TIMM_SMALL, 32)
    state = random_timm_state(TIMM_SMALL)
    wrong = {k: v for k, v in state.items() if not k.startswith("blocks.4")}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(UserError, match="missing key"):
        install_weights(TIMM_SMALL, tmp_path / "wrong.safetensors")
    supply_random_timm_weights(own_weights_dir)
    assert backbone_key(TIMM_SMALL, 32) != key_before  # the feature cache names the supplied weights

    model = create_model(TIMM_SMALL, 3, pretrained=True, image_size=32)  # timm's loader, pretrained_cfg_overlay
    assert torch.equal(model.backbone.conv_stem.weight, state["conv_stem.weight"])
    assert model.feature_dim == 1280 and model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)

    stages = model.stages()  # timm's group_matcher: stem, each block, head
    assert len(stages) == 19
    covered = {id(p) for s in stages for p in s.parameters()}
    assert covered == {id(p) for p in model.backbone.parameters()}
    assert stages[0][0] is model.backbone.conv_stem and stages[1] is model.backbone.blocks[0][0]
    apply_freeze_policy(model, "partial", 3)
    trainable = [s for s in stages if any(p.requires_grad for p in s.parameters())]
    assert len(trainable) == 3 and trainable[-1] is stages[-1]

    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    ort = feature_extractor(TIMM_SMALL, 32, engine="onnxruntime", model=model)(images)
    eager = feature_extractor(TIMM_SMALL, 32, setup=resolve_device("cpu"), engine="torch", model=model)(images)
    assert ort.shape == (5, 1280)
    np.testing.assert_allclose(ort, eager, rtol=1e-3, atol=1e-4)


def test_vit_stages_keep_tokens_with_the_stem():
    model = create_model("dinov2_vits14", 2, pretrained=False, image_size=28)
    stages = model.stages()
    assert len(stages) == 13  # stem (tokens, position embedding, patches), 12 blocks (the last with the norm)
    stem_params = {id(p) for p in stages[0].parameters()}
    assert id(model.backbone.cls_token) in stem_params and id(model.backbone.pos_embed) in stem_params
    assert model(torch.zeros(1, 3, 28, 28)).shape == (1, 2)


@pytest.mark.slow
def test_sweep_ranks_recommends_and_reuses_the_cache(shapes_dir, own_weights_dir):
    """A torchvision and a timm backbone (the timm one's export and latency come from the test above)."""
    from engine.features.latency import cached_latency
    from engine.sweep import format_sweep, run_sweep

    supply_random_timm_weights(own_weights_dir)
    calls = []
    first = run_sweep(str(shapes_dir), ["mobilenet_v2", TIMM_SMALL], image_size=32,
                      progress=lambda *a: calls.append(a))
    rows = {r["backbone"]: r for r in first["rows"]}
    assert set(rows) == {"mobilenet_v2", TIMM_SMALL}
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 and r["ort_ms_b1"] > 0 and r["eager_ms_b32"] > 0
    assert {c[0] for c in calls} == set(rows) and ("mobilenet_v2", 1, 1, "done") in calls
    assert cached_latency("mobilenet_v2", 32)["ort_ms_b32"] == rows["mobilenet_v2"]["ort_ms_b32"]
    rec = first["recommendation"]
    assert rec["best"] in rows and rec["fastest_within_one_point"] in first["pareto"]
    assert rec["sentence"].startswith(f"best accuracy: {rec['best']}") and "fastest within one point" in rec["sentence"]
    assert "Pareto" in format_sweep(first)

    t0 = time.perf_counter()
    second = run_sweep(str(shapes_dir), ["mobilenet_v2", TIMM_SMALL], image_size=32)
    assert time.perf_counter() - t0 < 10
    assert all(r["features_cached"] for r in second["rows"])
    assert [r["accuracy"] for r in second["rows"]] == [r["accuracy"] for r in first["rows"]]


def test_recommendation_prefers_a_faster_backbone_within_one_point():
    from engine.sweep import pareto_front, recommend

    rows = [{"backbone": "big", "accuracy": 0.95, "ort_ms_b1": 40.0},
            {"backbone": "small", "accuracy": 0.945, "ort_ms_b1": 5.0},
            {"backbone": "slow", "accuracy": 0.90, "ort_ms_b1": 50.0}]
    rec = recommend(rows)
    assert (rec["best"], rec["fastest_within_one_point"]) == ("big", "small")
    assert rec["sentence"].startswith("best accuracy: big (95.0%") and "small (94.5%" in rec["sentence"]
    assert pareto_front(rows) == ["big", "small"]


def test_cli_sweep_bad_input_is_one_line(capsys):
    from engine.cli import main

    assert main(["sweep", "digits", "--backbones", "mobilenet_v2"]) == 2
    assert capsys.readouterr().err.strip() == "error: a sweep compares 2 to 6 backbones; got 1"
    assert main(["sweep", "digits", "--backbones", "mobilenet_v2,no_such_net"]) == 2
    assert "unknown backbone 'no_such_net'" in capsys.readouterr().err
    assert main(["add-weights", "resnet18", "/nonexistent.pth"]) == 2
    assert capsys.readouterr().err.strip() == "error: weights file '/nonexistent.pth' does not exist"
