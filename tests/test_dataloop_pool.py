"""Issue 20, parts 3-5: the unlabelled pool and its suggestions, the selection strategies, the batch shift test,
and ``predict --run`` (per-image lines, then one summary line)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import SHAPES_CLASSES, draw_shape, make_shapes_dataset

SIZE = 32  # px: the features of ~100 drawn images take a second or two


def _photo_crops(n: int, seed: int = 0) -> list:
    """``n`` random 48 px crops of scikit-image's bundled photographs (the shift bench's), as PIL images."""
    import io

    from PIL import Image

    from engine.bench.shift import photo_crops

    return [Image.open(io.BytesIO(data)).convert("RGB") for _name, data in photo_crops(n, seed=seed, side=48)]


@pytest.fixture(scope="module")
def shapes_with_pool(tmp_path_factory):
    """A labelled shapes dataset with train/val folders and a pool of 15 unlabelled shapes beside it."""
    root = make_shapes_dataset(tmp_path_factory.mktemp("pool-data"), per_class=12, seed=3, splits=True)
    pool = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(99)
    for i in range(15):
        draw_shape(SHAPES_CLASSES[i % 3], rng).save(pool / f"img_{i:03d}.png")
    (pool / "notes.txt").write_text("not an image")
    return root, pool


@pytest.mark.slow
def test_suggestions_come_from_the_pool_and_confirmed_labels_join_the_training_set(shapes_with_pool):
    from engine.data.dataset import load_dataset
    from engine.dataloop.pool import LabelLoop

    root, pool = shapes_with_pool
    dataset = load_dataset(root)
    loop = LabelLoop(dataset, pool, image_size=SIZE)
    assert len(loop.files) == 15  # the text file is not an image
    rows = loop.suggest(5)
    assert len(rows) == 5 and len({r["path"] for r in rows}) == 5
    assert all(r["path"] in loop.files and r["suggested"] in dataset.classes and 0 < r["confidence"] <= 1
               for r in rows)
    before = loop.fit()[1]
    assert before["pool_labels"] == 0
    # The drawn pool images are easy: the model's own pre-labels are mostly the truth.
    truth = {f"img_{i:03d}.png": SHAPES_CLASSES[i % 3] for i in range(15)}
    assert sum(r["suggested"] == truth[r["path"]] for r in rows) >= 3
    point = loop.confirm({r["path"]: truth[r["path"]] for r in rows})
    assert point["pool_labels"] == 5 and point["labels"] == before["labels"] + 5
    assert [p["labels"] for p in loop.curve()] == [before["labels"], before["labels"] + 5]
    # Confirmed images are not suggested again; the next batch is the rest of the pool.
    again = loop.suggest(20)
    assert len(again) == 10 and not {r["path"] for r in again} & {r["path"] for r in rows}
    # A fresh loop over the same dataset and pool reads the stored labels; undo removes the batch.
    fresh = LabelLoop(load_dataset(root), pool, image_size=SIZE)
    assert fresh.confirmed() == {r["path"]: truth[r["path"]] for r in rows}
    assert fresh.undo() is not None and fresh.confirmed() == {} and len(fresh.curve()) == 1
    assert fresh.fit()[1]["labels"] == before["labels"]


@pytest.mark.slow
def test_unlabelled_folder_inside_the_dataset_is_the_pool_not_a_class(tmp_path):
    from engine.data.dataset import load_dataset
    from engine.dataloop.pool import LabelLoop, resolve_pool
    from engine.errors import UserError

    root = make_shapes_dataset(tmp_path / "data", per_class=8, seed=5)
    with pytest.raises(UserError, match="unlabelled"):
        resolve_pool(load_dataset(root))
    rng = np.random.default_rng(5)
    (root / "unlabelled").mkdir()
    for i in range(4):
        draw_shape("circle", rng).save(root / "unlabelled" / f"u{i}.png")
    dataset = load_dataset(root)
    assert dataset.classes == sorted(SHAPES_CLASSES)
    loop = LabelLoop(dataset, resolve_pool(dataset), image_size=SIZE)
    assert sorted(r["path"] for r in loop.suggest(10)) == [f"u{i}.png" for i in range(4)]
    with pytest.raises(UserError, match="unknown class"):
        loop.confirm({"u0.png": "hexagon"})


def test_strategies_pick_uncertain_and_spread_out_images():
    from engine.dataloop.active import STRATEGIES, margins, select_batch

    rng = np.random.default_rng(0)
    # Two tight clusters of points far apart, 20 each; the labelled one sits in cluster A.
    a = rng.normal(0, 0.01, (20, 8)) + np.eye(8)[0]
    b = rng.normal(0, 0.01, (20, 8)) + np.eye(8)[1]
    feats = np.concatenate([a, b]).astype(np.float32)
    labelled, unlabelled = np.array([0]), np.arange(1, 40)
    probs = np.tile([0.9, 0.1], (39, 1))
    probs[5] = [0.52, 0.48]  # row 5 of the unlabelled ones = image 6: the model hesitates
    assert select_batch("margin", feats, labelled, unlabelled, probs, 1)[0] == 6
    assert margins(probs).argmin() == 5
    # Diversity: the first pick is in the cluster with no label.
    assert select_batch("kcenter", feats, labelled, unlabelled, probs, 1)[0] >= 20
    for s in STRATEGIES:
        picked = select_batch(s, feats, labelled, unlabelled, probs, 6, seed=1)
        assert len(set(picked.tolist())) == 6 and set(picked.tolist()) <= set(unlabelled.tolist()), s


def test_batch_test_tells_a_shifted_batch_from_an_unshifted_one():
    import torch

    from engine.evaluation.shift import batch_shift_test, reference_sample, shift_sentence
    from engine.features import feature_extractor

    rng = np.random.default_rng(7)
    train = [draw_shape(SHAPES_CLASSES[i % 3], rng) for i in range(90)]
    same = [draw_shape(SHAPES_CLASSES[i % 3], rng) for i in range(30)]
    photos = _photo_crops(30)

    def features(images):
        arr = np.stack([np.asarray(im.convert("RGB").resize((SIZE, SIZE))) for im in images])
        return feature_extractor("mobilenet_v2", SIZE, engine="torch")(torch.from_numpy(arr).permute(0, 3, 1, 2))

    ref = reference_sample(features(train))
    unshifted = batch_shift_test(features(same), ref, permutations=499)
    shifted = batch_shift_test(features(photos), ref, flags=np.r_[np.ones(10), np.zeros(20)], permutations=499)
    assert unshifted is not None and shifted is not None
    assert unshifted.p_value > 0.05 and not unshifted.shifted
    assert shifted.p_value < 0.01 and shifted.shifted and shifted.mmd2 > unshifted.mmd2
    assert shift_sentence(shifted) == "this batch differs from the training data (p < 0.002); 33 % of its " \
        "images are flagged"
    assert "is not shown to differ" in shift_sentence(unshifted)
    assert batch_shift_test(features(same[:3]), ref) is None  # too few images to test


def test_suggest_cli_prints_one_json_line_per_image(shapes_with_pool, tmp_path):
    root, pool = shapes_with_pool
    out = subprocess.run([sys.executable, "-m", "engine", "suggest", str(root), "--pool", str(pool), "--k", "3",
                          "--image-size", str(SIZE), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 3 and all(set(r) == {"path", "suggested", "confidence"} for r in rows)
    bad = subprocess.run([sys.executable, "-m", "engine", "suggest", str(root), "--pool", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a folder" in bad.stderr


@pytest.mark.slow
def test_predict_run_prints_image_lines_then_the_batch_test(trained_run, tmp_path):
    from engine.evaluation import evaluate_run, load_evaluation

    if load_evaluation(trained_run.path) is None:
        evaluate_run(trained_run.path, n_resamples=200)
    paths = []
    for i, img in enumerate(_photo_crops(12, seed=1)):
        paths.append(str(tmp_path / f"photo_{i}.png"))
        img.save(paths[-1])
    out = subprocess.run([sys.executable, "-m", "engine", "predict", "--run", str(trained_run.path), *paths],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["image"] for r in lines[:-1]] == paths
    assert all("unlike_training" in r and "ood_score" in r for r in lines[:-1])
    summary = lines[-1]
    assert summary["summary"] == "batch" and summary["images"] == 12
    assert summary["flagged"] == sum(r["unlike_training"] for r in lines[:-1])
    assert summary["batch_test"]["available"] and summary["batch_test"]["shifted"]
    assert summary["sentence"].startswith("this batch differs from the training data (p <")


def test_the_two_stage_strategies_switch_from_typical_at_the_label_count():
    from engine.dataloop.active import SWITCH_PER_CLASS, select_batch

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(200, 16)).astype(np.float32)
    probs_all = rng.dirichlet(np.ones(2), size=200).astype(np.float32)
    for stage2 in ("margin", "badge"):
        few = np.arange(2 * SWITCH_PER_CLASS - 1)  # one short of the switch for 2 classes
        rest = np.setdiff1d(np.arange(200), few)
        assert (select_batch(f"typical-{stage2}", feats, few, rest, probs_all[rest], 5, seed=3).tolist()
                == select_batch("typical", feats, few, rest, probs_all[rest], 5, seed=3).tolist())
        many = np.arange(2 * SWITCH_PER_CLASS)
        rest = np.setdiff1d(np.arange(200), many)
        assert (select_batch(f"typical-{stage2}", feats, many, rest, probs_all[rest], 5, seed=3).tolist()
                == select_batch(stage2, feats, many, rest, probs_all[rest], 5, seed=3).tolist())


@pytest.mark.slow  # fits the probe once per round, strategy and seed
def test_bench_active_simulates_every_strategy_from_one_start_and_stops_within_half_the_pool(tmp_path):
    from engine.bench.active import bench_active, format_table
    from engine.dataloop.active import DEFAULT_STRATEGY

    data = make_shapes_dataset(tmp_path / "shapes", per_class=30, seed=5)
    result = bench_active(str(data), image_size=SIZE, seeds=2, rounds=50, strategies=("random", DEFAULT_STRATEGY))
    k, pool = len(SHAPES_CLASSES), result["pool_images"]
    assert result["batch"] == 2 * k and result["rounds"] == (pool // 2 - 2 * k) // (2 * k) >= 2
    assert result["budgets"] == [2 * k * (1 + r) for r in range(result["rounds"] + 1)]
    assert result["budgets"][-1] <= pool // 2  # 50 rounds asked; the pool's half is where they stop
    rows = {row["strategy"]: row for row in result["rows"]}
    # Every strategy starts each seed from the same labels, so the first point is the same for all.
    assert len({row["accuracy"][0] for row in rows.values()}) == 1
    assert rows["random"]["diff_vs_random"] == [0.0] * len(result["budgets"])
    assert rows["random"]["worse_than_random_at"] == [] and rows["random"]["share_of_random_labels"] <= 1.0
    for row in rows.values():
        assert all(0.0 <= a <= 1.0 for a in row["accuracy"]) and len(row["ci95"]) == len(result["budgets"])
        reached = row["labels_to_match_random"]
        assert reached is None or reached in result["budgets"]
    assert f"{DEFAULT_STRATEGY} (default)" in format_table([result])

    refused = subprocess.run([sys.executable, "-m", "engine", "bench", "active", str(data), "--strategies", "margin"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "--strategies must include random" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # trains and exports a probe
def test_bench_shift_passes_the_same_data_and_tells_photographs_apart_through_the_predict_path(tmp_path):
    from engine.bench.shift import bench_shift, format_table

    from engine.evaluation.shift import REFERENCE_SIZE

    # More training images than the batch test's reference holds, so the control (the rest) can be drawn.
    data = make_shapes_dataset(tmp_path / "shapes", per_class=240, seed=11)
    result = bench_shift(str(data), image_size=SIZE, draws=4, batch=12, photo_draws=2)
    same, control, photos = result["same_data"], result["control"], result["photographs"]
    assert result["held_out"] == "val" and result["held_out_images"] >= 12
    assert result["control_images"] == 576 - REFERENCE_SIZE  # 80 % of 720 train, less the reference's rows
    assert same["draws"] == control["draws"] == 4 and photos["draws"] == 2
    assert photos["share_p_under_0.01"] == 1.0 and photos["share_said_to_differ"] == 1.0  # drawn shapes vs photos
    for batches in (same, control):
        assert batches["p_max"] > 0.05 and batches["p_median"] > photos["p_max"]
    assert "shapes" in format_table([result])
    from engine.errors import UserError

    with pytest.raises(UserError, match="fewer than a batch"):
        bench_shift(str(data), image_size=SIZE, draws=1, batch=500, photo_draws=1)
