"""The walking skeleton's engine path: data -> train -> evaluate -> export -> predict."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.data.dataset import load_dataset
from engine.errors import UserError
from engine.export.inference import OnnxClassifier
from engine.training.checkpoint import load_checkpoint_model


def test_linear_probe_learns_shapes(trained_run):
    report = trained_run.evaluation()
    assert report["classes"] == ["circle", "square", "triangle"]
    # Chance is 1/3; a pretrained backbone separates drawn shapes easily.
    assert report["accuracy"] >= 0.75
    assert np.asarray(report["confusion_matrix"]).sum() == report["num_images"]
    status = trained_run.status()
    assert status["state"] == "done"
    (record,) = trained_run.metrics()  # the probe is one converged fit, recorded as one epoch
    assert record["probe"]["C"] > 0 and record["train_acc"] >= report["accuracy"] - 0.25


def test_export_parity_recorded(trained_run):
    parity = json.loads((trained_run.export_dir / "parity.json").read_text())
    assert parity["passed"] and parity["top1_agreement"] == 1.0
    assert parity["max_abs_logit_diff"] < 1e-3


def test_onnx_predict_matches_pytorch(trained_run, shapes_dir):
    model, config, classes = load_checkpoint_model(trained_run.best_checkpoint)
    classifier = OnnxClassifier(trained_run.onnx_file)
    files = sorted(shapes_dir.rglob("*.png"))[:6]
    batch = np.stack([classifier.prepare(f) for f in files])
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()
    results = classifier.predict(files, top_k=2)
    for row, result in zip(expected, results):
        top = result["top_k"][0]
        assert top["class"] == classes[int(row.argmax())]
        assert abs(top["probability"] - float(row.max())) < 1e-4


def test_one_class_dataset_is_refused(tmp_path, shapes_dir):
    (tmp_path / "only").mkdir()
    for f in sorted((shapes_dir / "circle").glob("*.png"))[:3]:
        (tmp_path / "only" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError, match="only one class"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inspect", "/no/such/folder"], "neither a folder"),
        (["train", "digits", "--backbone", "nope"], "unknown backbone"),
        (["train", "digits", "--backbone", "nope", "--queue"], "unknown backbone"),
        (["train", "/no/such/folder", "--queue"], "neither a folder"),
        (["predict", "/no/model.onnx", "x.png"], "does not exist"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2  # an uncaught exception would fail the test with its traceback
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_the_cli_parser_and_a_missing_run_answer_without_importing_torch(tmp_path):
    """Every command's parser is built before it runs, so the parser imports no heavy module: ``--help`` and
    the one-line answer to a wrong run directory come at once, not after torch's import."""
    import subprocess
    import sys

    script = ("import sys\nfrom engine.cli import build_parser, main\nbuild_parser()\n"
              f"code = main(['evaluate', {str(tmp_path / 'no-run')!r}])\n"
              "heavy = sorted(m for m in ('torch', 'torchvision', 'pandas', 'scipy', 'sklearn') if m in sys.modules)\n"
              "print(code, heavy)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2 []"
    assert "is not a run directory" in out.stderr and len(out.stderr.strip().splitlines()) == 1
