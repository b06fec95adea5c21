"""The download bundle: contents, model card, and a predict.py that reproduces the app exactly."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.export.bundle import build_bundle
from engine.export.inference import OnnxClassifier

ALLOWED_IMPORTS = {"__future__", "argparse", "json", "sys", "warnings", "pathlib", "numpy", "onnxruntime", "PIL"}


@pytest.fixture(scope="module")
def bundle_dir(exported_variants_run, tmp_path_factory):
    from engine.evaluation import evaluate_run, load_evaluation

    if load_evaluation(exported_variants_run.path) is None:  # the OOD reference the bundle carries a sample of
        evaluate_run(exported_variants_run.path, n_resamples=200)
    path = build_bundle(exported_variants_run.path)
    out = tmp_path_factory.mktemp("bundle")
    with zipfile.ZipFile(path) as zf:
        zf.extractall(out)
    (folder,) = list(out.iterdir())
    return folder


@pytest.fixture(scope="module")
def awkward_images(shapes_dir, tmp_path_factory):
    """Shapes plus the image kinds where two preprocessing copies usually drift apart."""
    out = tmp_path_factory.mktemp("awkward")
    files = sorted(shapes_dir.rglob("*.png"))[:5]
    base = Image.open(files[0]).convert("RGB")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    rgba.save(out / "alpha.png")
    base.convert("P", palette=Image.ADAPTIVE).save(out / "palette.png")
    base.convert("L").save(out / "grey.png")
    Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 200)).save(out / "sixteen.png")
    wide = base.resize((90, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: must be turned upright before resizing
    wide.save(out / "rotated.jpg", exif=exif.tobytes(), quality=90)
    (out / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return [*files, *(out / n for n in ("alpha.png", "palette.png", "grey.png", "sixteen.png", "rotated.jpg",
                                        "broken.png"))]


def test_bundle_contents_and_model_card(bundle_dir):
    names = {p.name for p in bundle_dir.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "model.fp16.onnx", "model.uint8in.onnx", "labels.txt", "preprocess.json",
            "parity.json", "MODEL_CARD.md", "predict.py", "requirements.txt", "ood_reference.npz"} <= names
    assert (bundle_dir / "labels.txt").read_text().split() == ["circle", "square", "triangle"]
    card = (bundle_dir / "MODEL_CARD.md").read_text()
    for section in ("## Data", "## Model and recipe", "## Validation metrics", "## Export parity", "## Intended use"):
        assert section in card
    assert "| int8 | model.int8.onnx |" in card and "mobilenet_v2" in card
    parity = json.loads((bundle_dir / "parity.json").read_text())
    assert parity["passed"] and set(parity["variants"]) >= {"fp32", "int8"}


def test_predict_py_needs_only_onnxruntime_numpy_pillow(bundle_dir):
    tree = ast.parse((bundle_dir / "predict.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS


@pytest.mark.parametrize("model_name", ["model.onnx", "model.uint8in.onnx", "model.int8.onnx"])
def test_bundle_predict_reproduces_the_app(bundle_dir, awkward_images, model_name, tmp_path):
    # Run from an unrelated folder, with nothing of ours importable.
    proc = subprocess.run(
        [sys.executable, "-I", str(bundle_dir / "predict.py"), *map(str, awkward_images),
         "--model", str(bundle_dir / model_name), "--top-k", "3"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    theirs = [line for line in lines if "image" in line]
    assert lines[-1]["summary"] == "batch" and lines[-1]["images"] == len(awkward_images) - 1  # one is broken
    ours = OnnxClassifier(bundle_dir / model_name).predict(awkward_images, top_k=3)
    assert len(theirs) == len(ours) == len(awkward_images)
    for path, t, o in zip(awkward_images, theirs, ours):
        assert t["image"] == str(path)
        if "error" in o:
            assert "error" in t and path.name == "broken.png"
            continue
        assert [r["class"] for r in t["top_k"]] == [r["class"] for r in o["top_k"]]
        np.testing.assert_allclose([r["probability"] for r in t["top_k"]],
                                   [r["probability"] for r in o["top_k"]], atol=1e-6, rtol=0)


def test_bundle_with_chosen_variants_only(exported_variants_run, tmp_path):
    path = build_bundle(exported_variants_run.path, ["int8"])
    with zipfile.ZipFile(path) as zf:
        models = sorted(n.rsplit("/", 1)[1] for n in zf.namelist() if n.endswith(".onnx"))
        card = zf.read(next(n for n in zf.namelist() if n.endswith("MODEL_CARD.md"))).decode()
    assert models == ["model.int8.onnx", "model.onnx"]  # fp32 always ships: it is the reference
    assert "| fp16 |" not in card


def _photo_files(folder, n: int) -> list:
    """``n`` 64 px crops of scikit-image's bundled photographs, saved as PNGs: nothing like drawn shapes."""
    import skimage.data

    names = ["astronaut", "chelsea", "coffee", "rocket", "horse", "camera", "coins", "immunohistochemistry"]
    rng = np.random.default_rng(4)
    paths = []
    for i in range(n):
        arr = np.asarray(getattr(skimage.data, names[i % len(names)])())
        arr = np.stack([arr] * 3, -1) if arr.ndim == 2 else arr[..., :3]
        top, left = (int(rng.integers(0, s - 128)) for s in arr.shape[:2])
        paths.append(folder / f"photo_{i}.png")
        Image.fromarray(arr[top:top + 128, left:left + 128].astype(np.uint8)).resize((64, 64)).save(paths[-1])
    return paths


def _bundle_predict(bundle_dir, images, cwd) -> list[dict]:
    proc = subprocess.run([sys.executable, "-I", str(bundle_dir / "predict.py"), *map(str, images)],
                          capture_output=True, text=True, timeout=120, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_bundle_predict_flags_images_and_tests_the_batch_as_the_app_does(bundle_dir, exported_variants_run,
                                                                         shapes_dir, tmp_path):
    from engine.export.analyse import analyse_images

    shapes = sorted(shapes_dir.rglob("*.png"))[::3][:12]
    photos = _photo_files(tmp_path, 12)
    for batch, shifted in ((shapes, False), (photos, True)):
        lines = _bundle_predict(bundle_dir, batch, tmp_path)
        rows, summary = lines[:-1], lines[-1]
        assert [r["image"] for r in rows] == list(map(str, batch))
        app = analyse_images(exported_variants_run.path, [(str(p), p.read_bytes()) for p in batch], budget=None)
        agree = np.mean([r["unlike_training"] == a["unlike_training"] for r, a in zip(rows, app["rows"])])
        assert agree >= 0.9, agree
        assert summary["summary"] == "batch" and summary["images"] == len(batch)
        assert summary["flagged"] == sum(r["unlike_training"] for r in rows)
        assert summary["batch_test"]["shifted"] is shifted is app["batch_test"]["shifted"]
        assert summary["sentence"].startswith("this batch differs" if shifted else "this batch is not shown")
    assert sum(r["unlike_training"] for r in lines[:-1]) >= 9  # most photos are flagged
    few = _bundle_predict(bundle_dir, photos[:3], tmp_path)
    assert len(few) == 3 and all("unlike_training" in r for r in few)  # under 5 images: no batch line


@pytest.mark.slow  # features of 1,330 images
def test_compact_reference_keeps_the_flag_calibrated_on_a_fifth_of_the_rows(tmp_path):
    """Digits features: a reference of 200 of 1,000 training rows (int8) flags about the same images as the
    full one, validation images and photographs alike."""
    import torch
    from sklearn.datasets import load_digits

    from engine.evaluation.ood import build_reference
    from engine.export.bundle_reference import compact_reference, dequantise
    from engine.features import feature_extractor

    digits = load_digits()
    grey = (digits.images * 255 / 16).astype(np.uint8)
    photos = np.stack([np.asarray(Image.open(p).convert("L").resize((8, 8))) for p in _photo_files(tmp_path, 30)])
    images = np.concatenate([grey[:1300], photos])
    batch = torch.from_numpy(np.stack([images] * 3, 1)).float()
    big = torch.nn.functional.interpolate(batch, size=32, mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    feats = feature_extractor("mobilenet_v2", 32, engine="torch")(big)
    train, val, photo = feats[:1000], feats[1000:1300], feats[1300:]
    full = build_reference(train, val)
    blob = compact_reference(full, rows=200)
    assert blob["codes"].dtype == np.int8 and blob["codes"].shape == (200, train.shape[1])
    assert int(blob["k"]) == 2 and 0.5 < float(blob["threshold_ratio"]) < 1.5
    compact = dequantise(blob["codes"])

    def flags(reference, k, threshold, x):
        sims = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ reference.T
        return np.sqrt(np.maximum(2 - 2 * -np.partition(-sims, k - 1, axis=1)[:, k - 1], 0)) > threshold

    val_flagged = flags(compact, int(blob["k"]), float(blob["threshold"]), val)
    assert val_flagged.mean() <= 0.05  # the full reference flags ~1 % of validation
    ours = flags(compact, int(blob["k"]), float(blob["threshold"]), np.concatenate([val, photo]))
    theirs = full.flags(full.scores(np.concatenate([val, photo])))
    assert np.mean(ours == theirs) >= 0.9
    assert flags(compact, int(blob["k"]), float(blob["threshold"]), photo).mean() >= 0.8

