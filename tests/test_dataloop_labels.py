"""Label issues and the corrections overlay, on a small real subset of scikit-learn's digits.

Planted label errors are found; a correction makes a new dataset version (fingerprint) and never touches a
file; a linear-probe retrain reads the corrected labels and records the version; undo restores it; bad
input is one clear line; the Dataset page's review grid drops and undoes by click.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.cli import main
from engine.data.builtin import materialise
from engine.data.corrections import write_corrections
from engine.data.dataset import load_dataset
from engine.dataloop.labels import find_label_issues
from engine.dataloop.overlay import dataset_version, drop, relabel, undo
from engine.errors import UserError

SIZE = 64
PER_CLASS = 30


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """30 images per digit copied into a folder of class folders of its own (its own corrections table)."""
    source = materialise("digits")
    dest = tmp_path_factory.mktemp("digits-small") / "digits-small"
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        (dest / class_dir.name).mkdir(parents=True)
        for f in sorted(class_dir.iterdir())[:PER_CLASS]:
            shutil.copy2(f, dest / class_dir.name / f.name)
    return dest


@pytest.fixture
def clean(digits_folder):
    """Start and end each test with no corrections."""
    write_corrections(digits_folder, [])
    yield digits_folder
    write_corrections(digits_folder, [])


def _folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        digest.update(str(f.relative_to(folder)).encode())
        if f.is_file():
            digest.update(f.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_planted_label_errors_are_found_worst_first(clean, capsys):
    dataset = load_dataset(clean)
    train = dataset.usable[dataset.usable["split"] == "train"]
    rng = np.random.default_rng(1)
    planted = train.iloc[rng.choice(len(train), size=15, replace=False)]
    classes = dataset.classes
    rows = [{"path": r.path, "action": "relabel", "at": 0,
             "label": classes[(classes.index(r.label) + int(rng.integers(1, len(classes)))) % len(classes)]}
            for r in planted.itertuples()]
    write_corrections(clean, rows)  # the planted errors, through the same overlay an analyst's fixes use
    noisy = load_dataset(clean)
    result = find_label_issues(noisy, image_size=SIZE)
    found = set(result.issues["path"]) & set(planted["path"])
    assert len(found) >= 0.7 * len(planted), (len(found), len(result.issues))
    truth = dict(zip(planted["path"], planted["label"]))
    hits = result.issues[result.issues["path"].isin(found)]
    assert (hits["suggested"] == hits["path"].map(truth)).mean() >= 0.8  # the suggestion is the true class
    assert len(result.issues) <= 3 * len(planted)

    assert main(["label-issues", str(clean), "--image-size", str(SIZE), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"path", "label", "suggested", "score"} <= set(lines[0])
    scores = [line["score"] for line in lines]
    assert scores == sorted(scores, reverse=True)
    assert set(truth) & {line["path"] for line in lines} == found


def test_overlay_changes_the_fingerprint_never_a_file_and_undo_restores_it(clean):
    before = _folder_hash(clean)
    dataset = load_dataset(clean)
    original = dataset_version(dataset)
    assert original.label == "original"
    first, second = dataset.usable["path"].iloc[0], dataset.usable["path"].iloc[1]
    other = next(c for c in dataset.classes if c != dataset.usable["label"].iloc[0])
    relabelled = relabel(dataset, first, other)
    dropped = drop(dataset, second)
    assert len({original.fingerprint, relabelled.fingerprint, dropped.fingerprint}) == 3
    assert dropped.label == "2 corrections"
    now = load_dataset(clean)
    assert now.usable.set_index("path").loc[first, "label"] == other
    assert second not in set(now.usable["path"])
    assert _folder_hash(clean) == before  # the user's files are untouched
    assert undo(now).fingerprint == relabelled.fingerprint
    assert undo(now).fingerprint == original.fingerprint
    assert load_dataset(clean).fingerprint() == original.fingerprint
    assert _folder_hash(clean) == before


def test_bad_corrections_are_one_clear_line(clean, capsys):
    dataset = load_dataset(clean)
    with pytest.raises(UserError, match="not an image of dataset"):
        relabel(dataset, "nope/missing.png", dataset.classes[0])
    with pytest.raises(UserError, match="unknown class 'banana'"):
        relabel(dataset, dataset.usable["path"].iloc[0], "banana")
    with pytest.raises(UserError, match="no corrections to undo"):
        undo(dataset)
    assert main(["drop", str(clean), "../../etc/passwd"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert dataset_version(load_dataset(clean)).corrections == 0


@pytest.mark.slow
def test_linear_probe_retrain_uses_the_corrected_labels(clean):
    from engine.data.tensors import load_split
    from engine.runs import new_run
    from engine.runs.table import run_row
    from engine.training.config import TrainConfig
    from engine.training.runner import train

    dataset = load_dataset(clean)
    train_rows = dataset.usable[dataset.usable["split"] == "train"]
    path, label = train_rows["path"].iloc[0], train_rows["label"].iloc[0]
    other = next(c for c in dataset.classes if c != label)
    relabel(dataset, path, other)
    drop(dataset, train_rows["path"].iloc[1])
    corrected = load_dataset(clean)
    config = TrainConfig(dataset=str(clean), backbone="mobilenet_v2", mode="linear", image_size=32, batch_size=32)
    run = new_run("corrected")
    run.write_config(config.to_dict())
    train(config, run)
    resolved = run.config()["resolved"]
    assert resolved["dataset_fingerprint"] == corrected.fingerprint() != dataset.fingerprint()
    assert resolved["num_train"] == len(train_rows) - 1
    assert run_row(run)["dataset_version"].startswith("2 corrections")
    seen = load_split(run.config(), "train", 32, resolved["classes"])
    labels = dict(zip(seen.paths, seen.labels.tolist()))
    assert resolved["classes"][labels[path]] == other


def test_a_relabel_reuses_the_cached_features_with_the_new_label(clean):
    from engine.features import split_features

    dataset = load_dataset(clean)
    before = split_features(dataset, "train", "mobilenet_v2", 32, dataset.classes)
    path = before.paths[0]
    other = next(c for c in dataset.classes if c != dataset.classes[before.labels[0]])
    relabel(dataset, path, other)
    corrected = load_dataset(clean)
    assert corrected.fingerprint() != dataset.fingerprint()
    after = split_features(corrected, "train", "mobilenet_v2", 32, corrected.classes)
    assert after.cached and after.paths == before.paths
    np.testing.assert_array_equal(after.features, before.features)
    assert corrected.classes[after.labels[0]] == other
    assert (after.labels[1:] == before.labels[1:]).all()
    drop(corrected, before.paths[-1])  # one image fewer: other features (a key of their own), never stale ones
    fewer = split_features(load_dataset(clean), "train", "mobilenet_v2", 32, corrected.classes)
    assert len(fewer) == len(before) - 1 and before.paths[-1] not in fewer.paths


def _reviewed(at: AppTest) -> int:
    text = " ".join(str(m.value) for m in at.markdown)
    return int(re.search(r"(\d+) reviewed", text).group(1))


@pytest.mark.slow
def test_review_grid_drops_and_undoes_by_click(clean):
    dataset = load_dataset(clean)
    row = dataset.usable.iloc[3]
    wrong = next(c for c in dataset.classes if c != row["label"])
    write_corrections(clean, [{"path": row["path"], "action": "relabel", "label": wrong, "at": 0}])
    from engine.workflow.dataloop import ISSUES_RESULT, label_issues_folder

    noisy = load_dataset(clean)
    out = label_issues_folder(noisy) / ISSUES_RESULT
    assert main(["label-issues", str(clean), "--image-size", str(SIZE), "--out", str(out)]) == 0
    issues = json.loads(out.read_text())["issues"]
    assert issues

    def script(root: str) -> None:
        from app.label_review import label_review
        from engine.data.dataset import load_dataset as load

        label_review(root, load(root), refresh=lambda: None)

    at = AppTest.from_function(script, args=(str(clean),), default_timeout=60).run()
    assert not at.exception, at.exception
    text = " ".join(str(m.value) for m in at.markdown)
    assert f"**{len(issues)}** suspected label issue(s)" in text
    reviewed = _reviewed(at)
    before = dataset_version(load_dataset(clean))
    next(b for b in at.button if b.label == "Drop").click().run()
    assert not at.exception, at.exception
    after = dataset_version(load_dataset(clean))
    assert after.corrections == before.corrections + 1 and after.fingerprint != before.fingerprint
    assert _reviewed(at) == reviewed + 1
    next(b for b in at.button if b.label == "Undo last correction").click().run()
    assert dataset_version(load_dataset(clean)).fingerprint == before.fingerprint


def test_bench_flips_the_asked_share_of_labels_each_to_another_class():
    from engine.bench.labels import flip_labels

    labels = np.repeat(np.arange(5), 40)
    noisy, flipped = flip_labels(labels, 5, 0.1, seed=3)
    assert len(flipped) == 20 and len(set(flipped.tolist())) == 20
    assert (noisy[flipped] != labels[flipped]).all()
    assert (np.delete(noisy, flipped) == np.delete(labels, flipped)).all()
    assert (flip_labels(labels, 5, 0.1, seed=3)[0] == noisy).all()
