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
            "parity.json", "MODEL_CARD.md", "predict.py", "requirements.txt"} <= names
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
    theirs = [json.loads(line) for line in proc.stdout.splitlines()]
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
