"""The linear probe, the frozen-feature cache, --balance and the held-out test split, on small real data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.data.dataset import load_dataset
from engine.features import feature_extractor, split_features
from engine.runs import new_run
from engine.training.config import TrainConfig
from engine.training.metrics import prior_correction
from engine.training.probe import fit_probe
from engine.training.runner import prepare, train

SIZE = 32  # small enough for seconds on CPU; the features are still real MobileNetV2 features


@pytest.fixture(scope="module")
def digits_features():
    dataset = load_dataset("digits")
    classes = dataset.classes
    train_f = split_features(dataset, "train", "mobilenet_v2", SIZE, classes)
    val_f = split_features(dataset, "val", "mobilenet_v2", SIZE, classes)
    return dataset, train_f, val_f


@pytest.mark.slow
def test_probe_matches_logistic_regression_on_the_same_features(digits_features):
    from sklearn.linear_model import LogisticRegression

    _, tr, va = digits_features
    x, y = tr.features[:600], tr.labels[:600]  # a subset keeps the test to seconds
    fit = fit_probe(x, y, 10)
    ours = (fit.logits(va.features).argmax(1) == va.labels).mean()
    baseline = LogisticRegression(max_iter=1000).fit(x, y).score(va.features, va.labels)
    assert ours >= baseline - 0.01, (ours, baseline)
    assert fit.cv_accuracy is not None and fit.C in [r["C"] for r in fit.cv_table]
    again = fit_probe(x, y, 10)  # deterministic: same data, same head
    np.testing.assert_array_equal(fit.weight, again.weight)


@pytest.mark.slow
def test_probe_head_is_the_runs_head(digits_features):
    """The fitted probe is folded into nn.Linear: the same logits from raw features."""
    _, tr, _ = digits_features
    fit = fit_probe(tr.features, tr.labels, 10, C=0.1)
    head = torch.nn.Linear(tr.features.shape[1], 10)
    fit.load_into(head)
    with torch.no_grad():
        got = head(torch.from_numpy(tr.features[:20])).numpy()
    np.testing.assert_allclose(got, fit.logits(tr.features[:20]), rtol=1e-4, atol=1e-4)


def test_feature_cache_is_hit_on_the_second_call(digits_features):
    dataset, tr, _ = digits_features
    again = split_features(dataset, "train", "mobilenet_v2", SIZE, dataset.classes)
    assert again.cached
    np.testing.assert_array_equal(again.features, tr.features)
    # A different image size is a different key: computed, not read.
    other = split_features(dataset, "val", "mobilenet_v2", SIZE + 8, dataset.classes)
    assert not other.cached


def test_onnxruntime_features_match_pytorch(digits_features):
    dataset, _, _ = digits_features
    from engine.data.tensors import decode_split

    images = decode_split(dataset, "val", SIZE, dataset.classes).images[:16]
    ort = feature_extractor("mobilenet_v2", SIZE, engine="onnxruntime")(images)
    eager = feature_extractor("mobilenet_v2", SIZE, engine="torch")(images)
    np.testing.assert_allclose(ort, eager, rtol=1e-3, atol=1e-4)
    # "auto" on CPU: onnxruntime once the backbone is exported; eager for a few images before that.
    assert feature_extractor("mobilenet_v2", SIZE, images=10).engine == "onnxruntime"
    assert feature_extractor("mobilenet_v2", SIZE + 16, images=10).engine == "torch"
    # The exported backbone is derived from published weights only: one file for every visitor's workspace.
    from engine.workspace import shared_cache_dir, use_workspace

    exported = sorted((shared_cache_dir() / "backbones").glob("*.onnx"))
    with use_workspace("ab" * 16):
        assert feature_extractor("mobilenet_v2", SIZE, images=10).engine == "onnxruntime"
    assert sorted((shared_cache_dir() / "backbones").glob("*.onnx")) == exported


def test_a_trained_module_is_scored_alike_by_onnxruntime_and_torch_and_falls_back_when_it_cannot_export(
        digits_features, tmp_path):
    """module_extractor (a fine-tune's evaluation): onnxruntime on CPU through a scratch file that does not stay,
    the torch path (a GPU's) alike, and torch again for a module no exporter takes."""
    import torch

    from engine.data.tensors import decode_split
    from engine.features import module_extractor
    from engine.models import create_model

    dataset, _, _ = digits_features
    images = decode_split(dataset, "val", SIZE, dataset.classes).images[:40]
    model = create_model("mobilenet_v2", 3, pretrained=True, image_size=SIZE).eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    scratch = tmp_path / "scoring.onnx.part"
    ort = module_extractor(model, mean, std, SIZE, scratch, engine="onnxruntime")
    eager = module_extractor(model, mean, std, SIZE, scratch, engine="torch")
    assert (ort.engine, eager.engine) == ("onnxruntime", "torch") and not scratch.exists()
    np.testing.assert_allclose(ort(images), eager(images), rtol=1e-3, atol=1e-4)
    assert module_extractor(model, mean, std, SIZE, scratch, images=10).engine == "torch"  # too few to export

    class Unexportable(torch.nn.Module):
        def forward(self, x):
            if torch.jit.is_tracing() or torch.compiler.is_exporting():
                raise RuntimeError("this module does not trace")
            return model(x)

    fallback = module_extractor(Unexportable(), mean, std, SIZE, scratch, engine="onnxruntime")
    assert fallback.engine == "torch" and not scratch.exists()
    np.testing.assert_allclose(fallback(images), eager(images), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_linear_run_uses_cached_features_and_reports_balanced_accuracy(shapes_dir):
    config = TrainConfig(dataset=str(shapes_dir), backbone="mobilenet_v2", mode="linear", image_size=SIZE)
    report = train(config, run := new_run("probe-a"))
    assert {"accuracy", "balanced_accuracy", "macro_f1"} <= set(report)
    assert report["accuracy"] > 0.6  # 3 classes of drawn shapes: chance is 0.33
    (record,) = run.metrics()
    assert record["probe"]["C"] > 0
    p = prepare(config)
    assert p.images_train is None  # the probe never decodes images when features are cached


@pytest.mark.slow
def test_balance_changes_what_it_should(tmp_path):
    from conftest import draw_shape

    rng = np.random.default_rng(0)
    for kind, n in (("circle", 40), ("square", 8), ("triangle", 4)):
        for split, count in (("train", n), ("val", max(2, n // 2))):
            folder = tmp_path / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                draw_shape(kind, rng).save(folder / f"{i}.png")
    base = dict(dataset=str(tmp_path), backbone="mobilenet_v2", mode="full", image_size=SIZE)
    plain = prepare(TrainConfig(**base))
    assert plain.loss_fn.weight is None and plain.sample_weights is None  # unweighted by default
    weighted = prepare(TrainConfig(**base, balance="weights"))
    w = weighted.loss_fn.weight.cpu()
    assert w[0] < w[1] < w[2]  # circle (most images) weighs least
    sampled = prepare(TrainConfig(**base, balance="sampler"))
    draws = torch.multinomial(sampled.sample_weights, 6000, replacement=True,
                              generator=torch.Generator().manual_seed(0))
    share = torch.bincount(sampled.y_train.cpu()[draws], minlength=3).float() / 6000
    assert share.min() > 0.25  # classes drawn about equally, although the data is 40:8:4

    probe_plain = train(TrainConfig(**(base | {"mode": "linear"})), new_run("bal-none"))
    probe_weighted = train(TrainConfig(**(base | {"mode": "linear"}), balance="weights"), new_run("bal-w"))
    assert "prior_correction" in probe_plain  # imbalanced: both trade-offs are reported
    pc = probe_plain["prior_correction"]
    assert pc["as_trained"]["accuracy"] == pytest.approx(probe_plain["accuracy"])
    minority_recall = [r["per_class"][2]["recall"] for r in (probe_plain, probe_weighted)]
    assert minority_recall[1] >= minority_recall[0]


def test_prior_correction_moves_predictions_to_rare_classes():
    logits = np.array([[4.0, 1.5], [2.0, 1.9], [0.0, 1.0]])
    y = np.array([0, 1, 1])
    out = prior_correction(y, logits, [90, 10])
    assert out["as_trained"]["accuracy"] == pytest.approx(2 / 3)
    assert out["prior_corrected"]["balanced_accuracy"] == pytest.approx(1.0)


@pytest.mark.slow
def test_test_split_is_held_out_and_reported(tmp_path):
    from conftest import SHAPES_CLASSES, draw_shape

    rng = np.random.default_rng(1)
    for kind in SHAPES_CLASSES:
        for split, count in (("train", 12), ("test", 5)):
            folder = tmp_path / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                draw_shape(kind, rng).save(folder / f"{i}.png")
    dataset = load_dataset(str(tmp_path), val_fraction=0.25)
    counts = dataset.usable.groupby("split").size().to_dict()
    assert counts == {"train": 27, "val": 9, "test": 15}  # validation drawn from train/, test untouched
    report = train(TrainConfig(dataset=str(tmp_path), mode="linear", image_size=SIZE, val_fraction=0.25),
                   new_run("held-out"))
    assert report["split"] == "test" and report["num_images"] == 15
    assert report["validation"]["num_images"] == 9
