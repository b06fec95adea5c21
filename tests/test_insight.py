"""Insight on real data: the curve rises, one probe per stage, the cat photo is a cat, digits are far."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import make_shapes_dataset

from engine.data.dataset import load_dataset
from engine.features import feature_extractor, split_features


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return load_dataset(str(make_shapes_dataset(tmp_path_factory.mktemp("insight-shapes"), per_class=20,
                                                splits=True)))


@pytest.mark.slow
def test_curve_rises_on_average(shapes):
    from engine.insight.curve import data_efficiency, fit_learning_curve, flattening_point

    classes = shapes.classes
    make = feature_extractor("mobilenet_v2", 32, engine="torch")
    train = split_features(shapes, "train", "mobilenet_v2", 32, classes, extractor=make)
    val = split_features(shapes, "val", "mobilenet_v2", 32, classes, extractor=make)
    curve = data_efficiency(train.features, train.labels, val.features, val.labels, len(classes), draws=3)
    points = curve["points"]
    sizes = [p["per_class"] for p in points]
    assert sizes == [1, 2, 5, 10, 15]  # the last point is the whole training split
    means = np.array([p["mean"] for p in points])
    assert all(p["draws"] == 3 for p in points[:-1]) and points[-1]["draws"] == 1
    assert all(p["min"] <= p["mean"] <= p["max"] for p in points)
    slope = np.polyfit(np.log(sizes), means, 1)[0]
    assert slope > 0 and means[-1] > means[0]
    assert "per_class" in flattening_point(points)
    fit = fit_learning_curve(points)
    assert "power law" in fit["model"] and (fit["good"] or fit["reason"])


@pytest.mark.slow
def test_stage_probe_has_one_value_per_stage(shapes):
    from engine.insight.stages import stage_probe
    from engine.models import create_model

    result = stage_probe(shapes, "mobilenet_v2", 32, max_per_class=10)
    stages = create_model("mobilenet_v2", 3, image_size=32).stages()
    assert [r["stage"] for r in result["rows"]] == list(range(len(stages)))
    assert all(0 <= r["accuracy"] <= 1 and r["se"] >= 0 for r in result["rows"])
    assert result["reading"]["text"].startswith("Accuracy")
    again = stage_probe(shapes, "mobilenet_v2", 32, max_per_class=10)  # from the disk cache
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in result["rows"]]


def test_chelsea_maps_to_an_imagenet_cat():
    from engine.insight.domain import head_probabilities, imagenet_head, reference_photos

    probs = head_probabilities(reference_photos()[:1], "mobilenet_v2")  # chelsea comes first
    categories = imagenet_head("mobilenet_v2")[1]
    assert "cat" in categories[int(probs[0].argmax())]


def test_greyscale_digits_read_further_than_colour_photos():
    from engine.insight.domain import READINGS, domain_report

    report = domain_report(load_dataset("digits"), "mobilenet_v2", per_class=3)
    photos = report["reference"]
    assert report["entropy_ci"][0] > photos["entropy"]
    assert report["confidence"] < photos["confidence"]
    order = [text for _, text in READINGS]
    assert order.index(report["reading"]) >= 2  # "far" or "very far"
    assert len(report["classes"]) == 10 and report["classes"][0]["imagenet_top"]


def test_cli_bad_input_is_one_line(capsys):
    from engine.cli import main

    assert main(["insight", "no-such-dataset-anywhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert main(["insight", "digits", "--backbone", "no_such_net"]) == 2
