"""The health report on datasets that contain each problem, formats, caching, embedding map, bench."""
from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import draw_shape, make_shapes_dataset
from engine.cli import main
from engine.data.dataset import load_dataset
from engine.data.health import IMBALANCE_RATIO, class_weights, health_check
from engine.data.images import inspect_file, load_rgb
from engine.errors import UserError


def _png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.fixture()
def problem_dir(tmp_path) -> Path:
    """Shapes with train/val folders plus one of every problem the report must catch."""
    root = make_shapes_dataset(tmp_path / "problems", per_class=12, splits=True)
    train, val = root / "train", root / "val"
    (train / "circle" / "notes.jpg").write_text("this is text, not a jpeg")
    (train / "circle" / "program.jpg").write_bytes(b"MZ\x90\x00" + bytes(200))
    good = (train / "square" / "square_001.png").read_bytes()
    (train / "square" / "cut.png").write_bytes(good[: len(good) // 2])
    _png_header_only(train / "triangle" / "bomb.png", 50000, 50000)
    (train / "circle" / "readme.txt").write_text("hello")
    shutil.copyfile(train / "circle" / "circle_001.png", train / "circle" / "copy_of_001.png")  # within class
    shutil.copyfile(train / "circle" / "circle_002.png", train / "square" / "wrong_label.png")  # conflicting
    shutil.copyfile(train / "square" / "square_002.png", val / "square" / "leak.png")  # across splits
    with Image.open(train / "triangle" / "triangle_001.png") as img:  # near duplicate: re-encoded and resized
        img.resize((52, 52), Image.BILINEAR).save(train / "triangle" / "near.jpg", quality=95)
    (train / "hexagon").mkdir()  # tiny class
    (val / "hexagon").mkdir()
    for i in range(3):
        draw_shape("circle", np.random.default_rng(100 + i)).save(train / "hexagon" / f"h{i}.png")
    draw_shape("circle", np.random.default_rng(200)).save(val / "hexagon" / "h.png")
    (train / "empty_class").mkdir()
    return root


def test_health_report_catches_every_problem(problem_dir):
    progress = []
    dataset, report = health_check(problem_dir, progress=lambda done, total: progress.append((done, total)))
    assert progress and progress[-1][0] == progress[-1][1]
    reasons = {Path(r["path"]).name: r["status"] for r in report["unreadable"]}
    assert "not an image" in reasons["notes.jpg"] and "not an image" in reasons["program.jpg"]
    assert "truncated" in reasons["cut.png"]
    assert "decompression bomb" in reasons["bomb.png"] or "pixel limit" in reasons["bomb.png"]
    assert "not an image file" in reasons["readme.txt"]
    assert not dataset.usable["path"].str.contains("notes|program|cut|bomb|readme").any()

    exact = report["duplicates"]["exact"]
    assert (exact["within_class"], exact["conflicting_labels"], exact["across_splits"]) == (1, 1, 1)
    near = report["duplicates"]["near"]
    assert any({Path(e["path"]).name, Path(e["other"]).name} == {"triangle_001.png", "near.jpg"}
               for e in near["examples"])
    assert report["tiny_classes"] == ["hexagon"]
    assert any("empty_class" in w and "empty" in w for w in report["warnings"])
    assert any("different labels" in w for w in report["warnings"])
    assert any("train and validation" in w for w in report["warnings"])
    balance = report["balance"]
    assert balance["train_counts"]["hexagon"] == 3 and balance["suggest_class_weights"]
    assert balance["class_weights"]["hexagon"] > balance["class_weights"]["circle"]
    assert report["split"]["source"] == "folders"
    flagged = {Path(r["path"]).name for r in report["flagged"]["examples"]}
    assert {"wrong_label.png", "leak.png", "cut.png", "h0.png"} <= flagged


def test_cli_inspect_json_has_health_and_text_output_lists_problems(problem_dir, capsys):
    assert main(["inspect", str(problem_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] > 0 and "classes" in out and "counts" in out  # existing keys stay
    assert out["health"]["duplicates"]["exact"]["conflicting_labels"] == 1
    assert main(["inspect", str(problem_dir)]) == 0
    text = capsys.readouterr().out
    assert "skipped" in text and "exact duplicate pairs: 3" in text


def test_generated_split_is_stratified_seeded_and_follows_val_fraction(shapes_dir):
    a, report = health_check(shapes_dir, val_fraction=0.25)
    b, _ = health_check(shapes_dir, val_fraction=0.25)
    assert report["split"] == {"source": "generated", "val_fraction": 0.25, "seed": 0,
                               "sizes": {"train": 36, "val": 12}}
    assert a.manifest["split"].tolist() == b.manifest["split"].tolist()
    assert (a.usable[a.usable["split"] == "val"]["label"].value_counts() == 4).all()
    _, half = health_check(shapes_dir, val_fraction=0.5)
    assert half["split"]["sizes"] == {"train": 24, "val": 24}


def test_single_class_and_all_broken_datasets_are_clear_errors(tmp_path, capsys):
    make_shapes_dataset(tmp_path / "one", per_class=4)
    for kind in ("square", "triangle"):
        shutil.rmtree(tmp_path / "one" / kind)
    with pytest.raises(UserError, match="only one class"):
        load_dataset(tmp_path / "one")
    assert main(["inspect", str(tmp_path / "one")]) == 2
    assert "only one class" in capsys.readouterr().err
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.jpg").write_text("no")
    with pytest.raises(UserError, match="readable image"):
        load_dataset(tmp_path / "broken")


def test_manifest_cache_rereads_only_changed_files(tmp_path):
    root = make_shapes_dataset(tmp_path / "cache", per_class=5)
    first = load_dataset(root).manifest.set_index("path")
    seen = []
    load_dataset(root, progress=lambda done, total: seen.append(total))
    assert seen == [0]  # nothing new to read
    target = root / "circle" / "circle_000.png"
    draw_shape("square", np.random.default_rng(9)).save(target)
    seen.clear()
    again = load_dataset(root, progress=lambda done, total: seen.append(total)).manifest.set_index("path")
    assert seen[-1] == 1
    assert again.loc["circle/circle_000.png", "hash"] != first.loc["circle/circle_000.png", "hash"]
    unchanged = again.drop(index="circle/circle_000.png")["hash"] == first.drop(index="circle/circle_000.png")["hash"]
    assert unchanged.all()


def _formats(folder: Path) -> dict[str, tuple[int, int]]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    expected = {}
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp"),
                     ("GIF", "gif")):
        rgb.save(folder / f"rgb.{ext}", fmt)
        expected[f"rgb.{ext}"] = (30, 20)
    rgb.convert("L").save(folder / "grey.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("P").save(folder / "palette.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16)).save(folder / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 30x20, shown 20x30
    rgb.save(folder / "rotated.jpg", exif=exif)
    for name in ("grey.png", "rgba.png", "palette.png", "cmyk.jpg", "sixteen.png"):
        expected[name] = (30, 20)
    expected["rotated.jpg"] = (20, 30)
    return expected


def test_every_format_loads_as_rgb_with_exif_orientation(tmp_path):
    for name, size in _formats(tmp_path).items():
        img = load_rgb(tmp_path / name)
        assert img.mode == "RGB" and img.size == size, name
        facts = inspect_file(tmp_path / name)
        assert facts["status"] == "ok" and (facts["width"], facts["height"]) == size, name
    sixteen = np.asarray(load_rgb(tmp_path / "sixteen.png"))
    assert sixteen.min() == 0 and sixteen.max() == 255  # scaled, not clipped to white


def test_builtin_demo_datasets_pass_their_own_health_check():
    for name in ("skimage-textures", "digits"):
        dataset, report = health_check(name)
        assert report["ok"] and not report["unreadable"], name
        assert len(dataset.classes) >= 3


def test_embedding_map_flags_a_mislabelled_image(tmp_path):
    from engine.features.embedding import embedding_map

    root = make_shapes_dataset(tmp_path / "emb", per_class=10)
    shutil.move(root / "circle" / "circle_003.png", root / "square" / "mislabelled.png")
    dataset = load_dataset(root)
    points = embedding_map(dataset, max_images=30)
    assert len(points) == 30 and set(points.columns) >= {"path", "label", "x", "y", "suspect"}
    row = points.set_index("path").loc["square/mislabelled.png"]
    assert row["suspect"] and row["neighbour_agreement"] < 0.5
    assert points["suspect"].mean() < 0.3
    assert embedding_map(dataset, max_images=30).equals(points)  # from the disk cache


def test_embedding_features_survive_a_relabel_and_leave_out_a_broken_file(tmp_path):
    from engine.features import rows_features

    root = make_shapes_dataset(tmp_path / "rows", per_class=4)
    dataset = load_dataset(root)
    rows = dataset.usable
    first = rows_features(dataset, rows, "mobilenet_v2", 32)
    assert not first.cached and first.features.shape[0] == len(rows) and first.paths == list(rows["path"])
    shutil.move(root / "circle" / "circle_001.png", root / "square" / "was_circle.png")  # a relabel: same bytes
    relabelled = load_dataset(root)
    again = rows_features(relabelled, relabelled.usable, "mobilenet_v2", 32)
    assert again.cached and len(again) == len(first)
    row = again.paths.index("square/was_circle.png")
    np.testing.assert_array_equal(again.features[row], first.features[first.paths.index("circle/circle_001.png")])
    assert again.labels[row] == relabelled.classes.index("square")
    (root / "triangle" / "triangle_000.png").write_bytes(b"broken since the scan")
    fewer = rows_features(relabelled, relabelled.usable.iloc[:-1], "mobilenet_v2", 32)  # another set: computed
    assert not fewer.cached and "triangle/triangle_000.png" not in fewer.paths
    assert len(fewer) == len(relabelled.usable) - 2 and fewer.features.shape == (len(fewer), first.features.shape[1])


def test_class_weights_only_past_the_imbalance_ratio():
    assert class_weights([10, 10, 10]) is None
    assert class_weights([10 * IMBALANCE_RATIO - 1, 10]) is None  # just under the ratio: plain loss
    weights = class_weights([30, 10, 20])
    assert weights is not None and weights.argmin() == 0 and weights.argmax() == 1
    assert np.dot(weights, [30, 10, 20]) / 60 == pytest.approx(1.0)  # mean weight over images is 1
    assert class_weights([10, 0]) is None  # an empty class cannot be weighted


@pytest.mark.slow
def test_embedding_map_in_the_background_task(tmp_path):
    import time

    from engine.workflow import embedding_status, start_embedding_map

    root = make_shapes_dataset(tmp_path / "emb-bg", per_class=6)
    dataset = load_dataset(root)
    assert embedding_status(dataset, max_images=18) == (None, None)
    task = start_embedding_map(str(root), dataset, max_images=18)
    assert task["state"] == "running"
    deadline = time.time() + 240
    while embedding_status(dataset, max_images=18)[0]["state"] == "running" and time.time() < deadline:
        time.sleep(0.5)
    state, points = embedding_status(dataset, max_images=18)
    assert state["state"] == "done", state
    assert len(points) == 18 and set(points["label"]) == {"circle", "square", "triangle"}


def test_bench_health_prints_figures(capsys):
    assert main(["bench", "health", "--n", "200"]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "naive" in out and "speed-up" in out
