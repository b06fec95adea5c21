"""Evaluation of a run: statistics checked against known answers, the OOD flag on real out-of-domain photos,
the threshold curve, Grad-CAM, the McNemar comparison and the CLI, on a small real run."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from conftest import SHAPES_CLASSES, draw_shape, make_shapes_dataset
from engine.evaluation import (bootstrap_ci, compare_runs, evaluate_run, fit_temperature, load_evaluation,
                               run_temperature, softmax, threshold_curve, threshold_point)
from engine.evaluation.compare import mcnemar

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- statistics on synthetic data

def test_bootstrap_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    # A classifier right with probability 0.8 on 300 images, drawn 300 times: the 95 % interval
    # must contain 0.8 in roughly 95 % of the draws (percentile bootstrap: 0.90..0.99 allowed).
    rng = np.random.default_rng(1)
    hits, widths = 0, []
    for trial in range(300):
        y = rng.integers(0, 4, 300)
        pred = np.where(rng.random(300) < 0.8, y, (y + 1) % 4)
        ci = bootstrap_ci(y, pred, "accuracy", n_resamples=500, seed=trial)
        hits += ci["low"] <= 0.8 <= ci["high"]
        widths.append(ci["high"] - ci["low"])
    coverage = hits / 300
    assert 0.90 <= coverage <= 0.99, coverage
    # Binomial standard error sqrt(.8*.2/300) = 0.023: a 95 % interval is about 0.09 wide.
    assert 0.07 < float(np.mean(widths)) < 0.11


def test_scores_are_scikit_learns():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from engine.training.metrics import (classification_report, confusion_counts, per_class_scores,
                                         scores_from_confusion, stratified_folds)

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)  # class 4 is never true...
    pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, 5, 200))
    pred[pred == 3] = 2  # ...and class 3 never predicted
    labels = list(range(5))

    def macro_f1(t, p):
        return f1_score(t, p, labels=labels, average="macro", zero_division=0)

    for name, fn in [("accuracy", accuracy_score), ("balanced_accuracy", balanced_accuracy_score),
                     ("macro_f1", macro_f1)]:
        batch = np.stack([rng.permutation(200)[:150] for _ in range(4)])  # resamples, scored at once
        got = scores_from_confusion(confusion_counts(y[batch], pred[batch], 5), name)
        np.testing.assert_allclose(got, [fn(y[i], pred[i]) for i in batch], atol=1e-12)
        ci = bootstrap_ci(y, pred, name, labels=labels)
        assert ci["value"] == pytest.approx(fn(y, pred)) and ci["low"] < ci["value"] < ci["high"]
    cm = confusion_counts(y, pred, 5)
    np.testing.assert_array_equal(cm, confusion_matrix(y, pred, labels=labels))
    for ours, theirs in zip(per_class_scores(cm), precision_recall_fscore_support(y, pred, labels=labels,
                                                                                  zero_division=0)):
        np.testing.assert_allclose(ours, theirs, atol=1e-12)
    report = classification_report(y, pred, rng.normal(size=(200, 5)), [f"c{i}" for i in labels])
    assert report["macro_f1"] == pytest.approx(macro_f1(y, pred))
    assert classification_report(y[:0], pred[:0], np.zeros((0, 5)), [f"c{i}" for i in labels])["accuracy"] == 0
    folds = stratified_folds(y, 3, seed=0)  # every image held out once; each fold holds every class
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(200))
    for tr, va in folds:
        assert set(y[va]) == set(y) and not set(tr) & set(va)


def test_temperature_scaling_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(logits, 2.5)])  # true probabilities: T = 2.5
    fit = fit_temperature(logits, labels)
    assert fit["fitted"] and fit["temperature"] == pytest.approx(2.5, rel=0.08)
    assert fit["nll_after"] < fit["nll_before"] and fit["ece_after"] < fit["ece_before"]
    few = fit_temperature(logits[:50], labels[:50])
    assert few["temperature"] == 1.0 and not few["fitted"] and "50 validation images" in few["reason"]


def test_threshold_curve_trades_coverage_for_precision():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 1000)
    correct = rng.random(1000) < confidence  # confidence means what it says
    curve = threshold_curve(confidence, correct)
    assert curve["coverage"][0] == 1.0 and curve["precision"][0] == pytest.approx(correct.mean())
    assert all(a >= b for a, b in zip(curve["coverage"], curve["coverage"][1:]))  # never answers more
    point = threshold_point(curve, 0.8)
    kept = confidence >= 0.8
    assert point["coverage"] == pytest.approx(kept.mean()) and point["precision"] == pytest.approx(correct[kept].mean())
    assert point["precision"] > curve["precision"][0] + 0.1  # a higher threshold is more precise here
    assert curve["precision"][-1] is None or curve["answered"][-1] == int((confidence >= 1.0).sum())


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_images():
    a = np.array([True] * 80 + [True] * 10 + [False] * 2 + [False] * 8)
    b = np.array([True] * 80 + [False] * 10 + [True] * 2 + [False] * 8)
    m = mcnemar(a, b)
    assert (m["a_only_right"], m["b_only_right"], m["discordant"]) == (10, 2, 12)
    assert m["p_value"] == pytest.approx(0.03857421875)  # 2 * P(X <= 2), X ~ Binomial(12, 1/2)
    assert mcnemar(a, a)["p_value"] == 1.0


# ---------------------------------------------------------------- a real run

@pytest.fixture(scope="module")
def shapes_runs(tmp_path_factory):
    """Two MobileNetV2 linear probes on 3 x 40 drawn shapes (different epochs), evaluated, fp32-exported."""
    from engine.export import export_run
    from engine.runs import new_run
    from engine.training.config import TrainConfig
    from engine.training.runner import train

    data = make_shapes_dataset(tmp_path_factory.mktemp("shapes40"), per_class=40, seed=3)
    runs = []
    for label, epochs in (("eval-a", 12), ("eval-b", 2)):
        config = TrainConfig(dataset=str(data), backbone="mobilenet_v2", mode="linear", epochs=epochs,
                             image_size=64, batch_size=16)
        run = new_run(label)
        run.write_config(config.to_dict())
        train(config, run)
        evaluate_run(run.path, n_resamples=300)
        export_run(run.path)
        runs.append(run)
    return runs


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _skimage_photos() -> list[tuple[str, bytes]]:
    import skimage.data as data

    photos = []
    for name in ("chelsea", "coffee", "astronaut", "rocket", "camera", "horse", "moon", "page", "text", "brick",
                 "grass", "gravel", "coins", "clock", "hubble_deep_field", "immunohistochemistry", "retina",
                 "colorwheel"):
        arr = np.asarray(getattr(data, name)())
        if arr.dtype != np.uint8:
            arr = (arr / arr.max() * 255).astype(np.uint8) if arr.max() > 0 else arr.astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        photos.append((f"{name}.png", _png(Image.fromarray(arr))))
    return photos


def test_evaluation_is_stored_and_consistent(shapes_runs):
    run = shapes_runs[0]
    ev = load_evaluation(run.path)
    s = ev.summary
    n = s["images"]
    assert n == len(ev.predictions) > 0 and not ev.stale
    p = ev.predictions
    assert s["accuracy"] == pytest.approx(p["correct"].mean())
    assert sum(map(sum, s["confusion"]["counts"])) == n
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        h = s["headline"][name]
        assert h["low"] <= h["value"] <= h["high"]
    # The cell gallery holds exactly the images counted in the cell.
    i, j = 0, 1
    assert len(ev.cell(SHAPES_CLASSES[i], SHAPES_CLASSES[j])) == s["confusion"]["counts"][i][j]
    # Stored probabilities are calibrated with the stored temperature and sum to one.
    probs = np.stack(p["probs"].to_numpy())
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert run_temperature(run.path)["temperature"] == s["calibration"]["temperature"]
    # The threshold curve starts at full coverage with the overall accuracy.
    assert s["threshold_curve"]["coverage"][0] == 1.0
    assert s["threshold_curve"]["precision"][0] == pytest.approx(s["accuracy"])
    assert s["overfitting"]["best_epoch"] in s["overfitting"]["epochs"] and s["overfitting"]["reading"]
    # Export recorded the evaluation's temperature (one place fits it).
    preprocess = json.loads((run.export_dir / "preprocess.json").read_text())
    assert preprocess["temperature"] == s["calibration"]["temperature"]


def test_ood_flag_catches_photos_against_a_shapes_model(shapes_runs):
    from engine.export.analyse import analyse_images

    run = shapes_runs[0]
    photos = analyse_images(run.path, _skimage_photos())
    assert photos["ood"]["available"] and not photos["errors"]
    flagged = [r["unlike_training"] for r in photos["rows"]]
    assert np.mean(flagged) >= 0.8, [(r["file"], r["ood_score"]) for r in photos["rows"]]
    # New shapes, drawn like the training ones but never seen: few are flagged.
    rng = np.random.default_rng(1234)
    fresh = [(f"{k}-{i}.png", _png(draw_shape(k, rng))) for k in SHAPES_CLASSES for i in range(20)]
    same = analyse_images(run.path, fresh)
    rate = np.mean([r["unlike_training"] for r in same["rows"]])
    assert rate <= 0.15, rate
    assert photos["ood"]["val_flagged_rate"] <= 0.05


def test_batch_reports_bad_files_and_reads_zips(shapes_runs):
    from engine.export.analyse import UNSURE, analyse_images

    run = shapes_runs[0]
    rng = np.random.default_rng(5)
    zbuf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("a/circle.png", _png(draw_shape("circle", rng)))
        z.writestr("notes.txt", "hello")
    files = [("square.png", _png(draw_shape("square", rng))), ("broken.png", b"\x89PNG\r\n\x1a\nbroken"),
             ("batch.zip", zbuf.getvalue())]
    result = analyse_images(run.path, files, top_k=2)
    assert [r["file"] for r in result["rows"]] == ["square.png", "batch.zip/a/circle.png"]
    assert {e["file"] for e in result["errors"]} == {"broken.png", "batch.zip/notes.txt"}
    assert all(r["answer"] == r["prediction"] for r in result["rows"])  # threshold 0: always an answer
    # Between the two probabilities: the less sure image becomes "unsure", the other keeps its answer.
    lo, hi = sorted(r["probability"] for r in result["rows"])
    if lo < hi:
        split = analyse_images(run.path, files, top_k=2, threshold=(lo + hi) / 2)
        assert sorted(r["answer"] == UNSURE for r in split["rows"]) == [False, True]
    # Above every probability: every answer is "unsure", the prediction is still shown.
    result = analyse_images(run.path, files, top_k=2, threshold=float(np.nextafter(hi, 2)))
    assert all(r["answer"] == UNSURE and r["prediction"] in SHAPES_CLASSES for r in result["rows"])
    assert all(len(r["top_k"]) == 2 and r["ms"] > 0 for r in result["rows"])


def test_activation_map_is_grad_cam_of_the_layer_the_head_pools(shapes_runs):
    import torch
    from captum.attr import LayerGradCam

    from engine.evaluation import activation_maps
    from engine.evaluation.cam import target_layer
    from engine.training.augment import normalize
    from engine.training.checkpoint import load_checkpoint_model

    run = shapes_runs[0]
    img = draw_shape("square", np.random.default_rng(7))
    cam = activation_maps(run.path, img, ["square", "circle"])
    assert set(cam["maps"]) == {"square", "circle"}
    for name in ("square", "circle"):
        heat = cam["heat"][name]
        assert heat.shape == cam["image"].shape[:2] and heat.min() >= 0 and heat.max() <= 1
        assert cam["maps"][name].shape == cam["image"].shape and cam["maps"][name].dtype == np.uint8
    assert not np.array_equal(cam["maps"]["square"], cam["image"])  # something is drawn on top
    # Grad-CAM's defining identity when a global average pool feeds a linear head: the map (before ReLU)
    # sums to the class logit minus its bias. It holds only for the layer the head pools, so this checks
    # that target_layer picks that layer.
    model, _cfg, classes = load_checkpoint_model(run.best_checkpoint)
    cfg = run.config()["resolved"]
    x = normalize(torch.from_numpy(cam["image"].copy()).permute(2, 0, 1)[None], cfg["mean"], cfg["std"])
    with torch.no_grad():
        logits = model(x)[0]
    for c in range(len(classes)):
        raw = LayerGradCam(model, target_layer(model)).attribute(x, target=c, relu_attributions=False)
        assert float(raw.sum()) == pytest.approx(float(logits[c] - model.head.bias[c]), rel=1e-3, abs=1e-3)


def test_compare_runs_with_mcnemar(shapes_runs):
    a, b = shapes_runs
    result = compare_runs(a.path, b.path)
    m = result["mcnemar"]
    assert m["a_only_right"] + m["b_only_right"] == len(result["flipped"])
    assert result["accuracy_a"] - result["accuracy_b"] == pytest.approx(
        (m["a_only_right"] - m["b_only_right"]) / result["images"])
    same = compare_runs(a.path, a.path)
    assert same["mcnemar"]["p_value"] == 1.0 and len(same["flipped"]) == 0


def test_cli_prints_the_stored_numbers_and_refuses_bad_input(shapes_runs, tmp_path):
    run = shapes_runs[0]
    out = subprocess.run([sys.executable, "-m", "engine", "evaluate", str(run.path), "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    stored = load_evaluation(run.path).summary
    assert printed["headline"] == stored["headline"] and printed["evaluated_at"] == stored["evaluated_at"]
    bad = subprocess.run([sys.executable, "-m", "engine", "evaluate", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a run directory" in bad.stderr


def test_a_copied_run_keeps_its_evaluation_and_new_weights_invalidate_it(shapes_runs, tmp_path):
    import torch

    from engine.runs import Run

    copy = Run(shutil.copytree(shapes_runs[0].path, tmp_path / "copy"))
    assert load_evaluation(copy.path) is not None and not load_evaluation(copy.path).stale
    blob = torch.load(copy.best_checkpoint, weights_only=True)
    blob["state_dict"]["head.bias"] += 1.0
    torch.save(blob, copy.best_checkpoint)
    assert load_evaluation(copy.path).stale and run_temperature(copy.path) is None


def test_overfitting_reading_names_the_epoch_validation_stopped_improving():
    from engine.evaluation import overfitting

    val = [1.0 - 0.1 * e if e <= 6 else 0.4 + 0.02 * (e - 6) for e in range(1, 31)]
    metrics = [{"epoch": e, "train_loss": 1.0 - 0.03 * e, "val_loss": v} for e, v in zip(range(1, 31), val)]
    fit = overfitting(metrics)
    assert fit["best_epoch"] == 6 and fit["epochs_since_best"] == 24
    assert "stopped improving at epoch 6 of 30" in fit["reading"] and "gap grew" in fit["reading"]
    assert fit["gap"][-1] == pytest.approx(val[-1] - (1.0 - 0.03 * 30))
    still = overfitting([{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e + 0.1} for e in range(1, 6)])
    assert "still improving at the last epoch (5)" in still["reading"]
    probe = overfitting([{"epoch": 1, "train_loss": 0.3, "val_loss": 0.5, "probe": {"C": 0.01}}])
    assert "fitted in one step" in probe["reading"] and "C=0.01" in probe["reading"]


@pytest.fixture(scope="module")
def fine_tune_run(shapes_dir):
    """A one-epoch MobileNetV2 full fine-tune on the drawn shapes (32 px)."""
    from engine.runs import new_run
    from engine.training.config import TrainConfig
    from engine.training.runner import train

    config = TrainConfig(dataset=str(shapes_dir), backbone="mobilenet_v2", mode="full", epochs=1,
                         image_size=32, batch_size=16, threads=1)
    run = new_run("eval-sample")
    run.write_config(config.to_dict())
    train(config, run)
    return run


@pytest.mark.slow  # trains a fine-tune
def test_a_fine_tunes_evaluation_scores_a_seeded_sample_of_its_training_images(fine_tune_run, monkeypatch):
    """A fine-tune has no cached features: its training images go through the model again for the OOD
    reference and the train accuracy, at most TRAIN_SAMPLE_IMAGES of them, the same ones every time."""
    import engine.evaluation.evaluator as evaluator

    run = fine_tune_run
    whole = evaluate_run(run.path, n_resamples=100)
    n_train = whole["train_images"]
    assert whole["train_images_scored"] == n_train > 10 and whole["ood"]["train_images"] == n_train

    monkeypatch.setattr(evaluator, "TRAIN_SAMPLE_IMAGES", 10)
    sampled = [evaluate_run(run.path, n_resamples=100) for _ in range(2)]
    for s in sampled:
        assert s["train_images"] == n_train and s["train_images_scored"] == 10 and s["ood"]["train_images"] == 10
        assert round(s["train_accuracy"] * 10, 6) == round(s["train_accuracy"] * 10)  # a share of 10 images
        assert s["accuracy"] == whole["accuracy"]  # the validation split is scored whole
    assert sampled[0]["train_accuracy"] == sampled[1]["train_accuracy"]  # the run's seed picks the same images
    picks = evaluator.train_sample(n_train, 0, 10)
    assert len(set(picks)) == 10 and list(picks) == sorted(picks) and picks.max() < n_train
    assert list(evaluator.train_sample(5, 0, 10)) == [0, 1, 2, 3, 4]


@pytest.mark.slow  # trains a fine-tune
def test_a_fine_tune_is_scored_alike_by_onnxruntime_torch_and_trainings_own_validation_pass(fine_tune_run,
                                                                                            tmp_path):
    """evaluate reuses the best weights' validation pass that training made (val_outputs.npz) and scores the
    rest with onnxruntime on CPU or torch (the GPU path, run here on the CPU): all three agree, and outputs
    left by other weights are never reused."""
    import torch

    from engine.evaluation.store import evaluation_files
    from engine.runs import Run

    run = fine_tune_run
    assert run.val_outputs_file.is_file()  # written by training with the best checkpoint
    reused = evaluate_run(run.path, n_resamples=100, engine="onnxruntime")
    preds_reused = load_evaluation(run.path).predictions
    saved = run.val_outputs_file.read_bytes()
    run.val_outputs_file.unlink()
    results = {}
    for engine in ("onnxruntime", "torch"):
        summary = evaluate_run(run.path, n_resamples=100, engine=engine)
        results[engine] = (summary, np.stack(load_evaluation(run.path).predictions["probs"].to_numpy()))
    np.testing.assert_allclose(results["onnxruntime"][1], results["torch"][1], atol=1e-4)
    np.testing.assert_allclose(np.stack(preds_reused["probs"].to_numpy()), results["torch"][1], atol=1e-4)
    for summary, _ in results.values():
        assert summary["accuracy"] == reused["accuracy"]
        assert summary["train_accuracy"] == reused["train_accuracy"]
        assert summary["ood"]["threshold"] == pytest.approx(reused["ood"]["threshold"], rel=1e-3)
    assert not list(evaluation_files(run.path)["summary"].parent.glob("*.onnx*"))  # the scoring graph is gone

    # New weights (in a copy): the saved pass is another model's, so the validation images are scored again.
    run.val_outputs_file.write_bytes(saved)
    copy = Run(shutil.copytree(run.path, tmp_path / "copy"))
    blob = torch.load(copy.best_checkpoint, weights_only=True)
    blob["state_dict"]["head.bias"] += torch.arange(len(blob["state_dict"]["head.bias"]), dtype=torch.float32) * 50
    torch.save(blob, copy.best_checkpoint)
    shifted = evaluate_run(copy.path, n_resamples=100, engine="torch")
    last = len(SHAPES_CLASSES) - 1
    table = load_evaluation(copy.path).predictions
    assert set(table["pred"]) == {last}  # the bias decides every image
    assert shifted["accuracy"] == pytest.approx((table["label"] == last).mean())
