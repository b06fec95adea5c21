"""Export variants and the parity gate: every file checks, fp32 is exact, int8 reports its cost."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from engine.export.bundle import BundleBlocked, build_bundle
from engine.export import (VARIANTS, check_parity, export_run, fit_temperature, gate_failure, gate_label,
                           variant_path)
from engine.export.inference import OnnxClassifier
from engine.runs import Run


def _input_type(model: onnx.ModelProto):
    tensor = model.graph.input[0].type.tensor_type
    return tensor.elem_type, [d.dim_param or d.dim_value for d in tensor.shape.dim]


def test_every_variant_written_checked_and_gated(exported_variants_run):
    run = exported_variants_run
    parity = json.loads((run.export_dir / "parity.json").read_text())
    assert set(parity["variants"]) == set(VARIANTS)
    for v in VARIANTS:
        model = onnx.load(str(variant_path(run, v)))
        onnx.checker.check_model(model)
        meta = {p.key: p.value for p in model.metadata_props}
        record = json.loads(meta["transfer_studio.preprocess"])
        assert record["variant"] == v and record["classes"] == ["circle", "square", "triangle"]
        assert "temperature" in record
        elem, dims = _input_type(model)
        assert isinstance(dims[0], str), f"{v}: batch dimension is not dynamic"
        assert elem == (onnx.TensorProto.UINT8 if v == "fp32-uint8in" else onnx.TensorProto.FLOAT)
        assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    fp32 = parity["variants"]["fp32"]
    assert parity["passed"] and fp32["passed"] and fp32["top1_agreement"] == 1.0
    assert fp32["max_abs_logit_diff"] <= fp32["tolerance"]
    assert parity["variants"]["fp32-uint8in"]["passed"]
    # Lossy variants have no verdict, but every figure the user decides on.
    for v in ("fp16", "int8"):
        r = parity["variants"][v]
        assert r["gate"] == "report" and r["passed"] is None
        assert 0.0 <= r["accuracy"] <= 1.0 and isinstance(r["flipped_by_class"], dict)
        assert r["accuracy_delta_points"] == pytest.approx(100 * (r["accuracy"] - r["pytorch_accuracy"]), abs=1e-3)
        assert len(r["flipped"]) == round((1 - r["top1_agreement"]) * r["images"])
    sizes = {v: parity["variants"][v]["bytes"] for v in VARIANTS}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]


def test_int8_and_fp16_are_really_lower_precision(exported_variants_run):
    int8 = onnx.load(str(variant_path(exported_variants_run, "int8")))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [numpy_helper.to_array(t) for t in int8.graph.initializer]
    assert any(w.dtype == np.int8 and w.ndim == 4 for w in weights)  # per-channel conv weights
    fp16 = onnx.load(str(variant_path(exported_variants_run, "fp16")))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)


def test_uint8_input_variant_predicts_like_fp32(exported_variants_run, shapes_dir):
    files = sorted(shapes_dir.rglob("*.png"))[:8]
    fp32 = OnnxClassifier(variant_path(exported_variants_run, "fp32")).predict(files, top_k=3)
    u8 = OnnxClassifier(variant_path(exported_variants_run, "fp32-uint8in"))
    assert u8.prepare(files[0]).dtype == np.uint8
    for a, b in zip(fp32, u8.predict(files, top_k=3)):
        assert [r["class"] for r in a["top_k"]] == [r["class"] for r in b["top_k"]]
        assert np.allclose([r["probability"] for r in a["top_k"]], [r["probability"] for r in b["top_k"]], atol=1e-5)


def _scale_head(path, factor: float) -> None:
    """Tamper: multiply the classifier's weight matrix (the only 2-D initializer) in place."""
    model = onnx.load(str(path))
    heads = [t for t in model.graph.initializer if len(t.dims) == 2]
    assert len(heads) == 1
    scaled = numpy_helper.from_array(numpy_helper.to_array(heads[0]) * factor, heads[0].name)
    heads[0].CopyFrom(scaled)
    onnx.save(model, str(path))


def test_tampered_fp32_fails_gate_and_blocks_bundle(exported_variants_run, tmp_path):
    run = Run(shutil.copytree(exported_variants_run.path, tmp_path / "tampered"))
    build_bundle(run.path)  # the untouched export ships

    _scale_head(run.onnx_file, 1.5)
    # Without a new check, the changed bytes alone block the bundle.
    with pytest.raises(BundleBlocked, match="changed after its parity check"):
        build_bundle(run.path)
    # Re-checking the tampered file fails the strict gate.
    parity = check_parity(run.path)
    assert parity["passed"] is False and parity["variants"]["fp32"]["passed"] is False
    assert parity["max_abs_logit_diff"] > parity["tolerance"]
    assert "disagrees with PyTorch" in gate_failure(parity)
    with pytest.raises(BundleBlocked, match="download blocked"):
        build_bundle(run.path)


@pytest.mark.slow
def test_cli_export_variants_and_bundle(exported_variants_run, tmp_path):
    run = Run(shutil.copytree(exported_variants_run.path, tmp_path / "cli"))
    shutil.rmtree(run.export_dir)
    proc = subprocess.run([sys.executable, "-m", "engine", "export", str(run.path), "--variants", "int8", "--bundle"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "top-1 agreement 1.0000" in proc.stdout
    assert "int8" in proc.stdout and "[passed]" in proc.stdout and "[reported]" in proc.stdout
    assert (run.export_dir / "bundle.zip").is_file() and variant_path(run, "int8").is_file()
    assert not variant_path(run, "fp16").exists()


def test_export_refuses_unknown_variant(exported_variants_run):
    from engine.errors import UserError

    with pytest.raises(UserError, match="unknown export variant"):
        export_run(exported_variants_run.path, variants=["bf17"])


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 5)).astype(np.float32)
    true_t = 2.0
    p = np.exp(logits / true_t)
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    fit = fit_temperature(logits, labels)
    assert fit["fitted"] and fit["temperature"] == pytest.approx(true_t, rel=0.1)
    assert fit["nll_after"] < fit["nll_before"]
    small = fit_temperature(logits[:20], labels[:20])
    assert small == {**small, "temperature": 1.0, "fitted": False}


def test_exported_probabilities_use_the_recorded_temperature(exported_variants_run, shapes_dir):
    """predict() applies softmax(logits / T) with the T stored in the model."""
    clf = OnnxClassifier(exported_variants_run.onnx_file)
    files = sorted(shapes_dir.rglob("*.png"))[:4]
    logits = clf.logits(np.stack([clf.prepare(f) for f in files]))
    z = logits / clf.temperature
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    for row, result in zip(expected, clf.predict(files, top_k=1)):
        assert result["top_k"][0]["probability"] == pytest.approx(float(row.max()), abs=1e-6)


def test_gate_label_shows_any_variants_error():
    # A lossy variant that could not be checked shows its error, not "reported".
    assert gate_label({"gate": "report", "passed": None, "error": "'model.int8.onnx' is not a loadable ONNX model"}) \
        == "'model.int8.onnx' is not a loadable ONNX model"
    assert gate_label({"gate": "report", "passed": None}) == "reported"
    assert gate_label({"gate": "strict", "passed": False}) == "FAILED"
    assert gate_label({"gate": "strict", "passed": True}) == "passed"
