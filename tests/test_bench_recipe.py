"""The recipe benchmark: every method scored on the same held-out images, compared pairwise."""
from __future__ import annotations

import pytest

from engine.bench.recipe import METHODS, bench_recipe, format_table, paired_difference
from engine.bench.train import bench_epochs, format_epochs
from engine.errors import UserError


def test_paired_difference_counts_only_the_images_where_the_two_disagree():
    y = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    a = {"y_true": y, "y_pred": y}  # all right
    b = {"y_true": y, "y_pred": [1 - v for v in y[:2]] + y[2:]}  # wrong on two images
    diff, half = paired_difference(a, b)
    assert diff == pytest.approx(20.0)
    assert 0 < half < 40
    assert paired_difference(a, a) == (0.0, 0.0)
    assert paired_difference(a, {"y_true": y[::-1], "y_pred": y}) is None  # not the same images


@pytest.mark.slow
def test_bench_recipe_compares_every_method_on_the_same_images(shapes_dir):
    result = bench_recipe(str(shapes_dir), image_size=32, methods=METHODS, epochs=1, progress=lambda m: None)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == set(METHODS)
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["accuracy_ci95"] <= 1 and r["seconds"] > 0 and r["cpu_seconds"] > 0
        assert "y_pred" not in r
    for name in ("probe/logreg", "finetune/reference"):
        c = result["comparisons"][name]
        product, baseline = name.split("/")
        assert c["accuracy_points"] == pytest.approx(100 * (rows[product]["accuracy"] - rows[baseline]["accuracy"]),
                                                     abs=0.01)
        assert c["accuracy_points_ci95"] is not None  # the paired interval: both scored the same images
    table = format_table([result])
    assert "probe/logreg" in table and "±" in table


def test_an_unknown_variant_is_one_clear_line(shapes_dir):
    with pytest.raises(UserError, match="unknown variant"):
        bench_recipe(str(shapes_dir), methods=("reference",), variants=("bn-sideways",), progress=lambda m: None)


@pytest.mark.slow
def test_each_variant_is_one_more_fine_tune_scored_against_the_reference(shapes_dir):
    result = bench_recipe(str(shapes_dir), image_size=32, methods=("reference",), epochs=1,
                          variants=("bn-adapt", "bn-train"), progress=lambda m: None)
    assert [r["method"] for r in result["rows"]] == ["finetune:bn-adapt", "finetune:bn-train", "reference"]
    for name in ("finetune:bn-adapt/reference", "finetune:bn-train/reference"):
        assert result["comparisons"][name]["accuracy_points_ci95"] is not None


@pytest.mark.slow
def test_bench_train_sets_the_products_epochs_beside_the_references(shapes_dir):
    result = bench_epochs("mobilenet_v2", dataset=str(shapes_dir), image_size=32, epochs=2, batch_size=8,
                          progress=lambda m: None)
    assert [r["epoch"] for r in result["product"]] == [1, 2] == [r["epoch"] for r in result["reference"]]
    for row in result["product"] + result["reference"]:
        assert row["images_per_s"] > 0 and row["cpu_seconds"] > 0
    assert "product/ref" in format_epochs(result)
