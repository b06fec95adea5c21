"""``bench infer`` runs end to end and prints every row (timings are printed, never asserted)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from engine.bench.infer import bench_infer, format_bench

pytestmark = pytest.mark.slow  # the CLI and the benchmark on a trained, exported run

ENGINES = ["pytorch eager fp32", "onnxruntime fp32", "onnxruntime int8"]


def test_cli_bench_infer_prints_every_row(exported_variants_run):
    proc = subprocess.run([sys.executable, "-m", "engine", "bench", "infer", str(exported_variants_run.path),
                           "--iters", "2", "--batch", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "GFLOPs/image" in lines[0] and "GEMM" in lines[0]
    for engine in [*ENGINES, "onnxruntime fp16"]:
        assert any(line.startswith(engine) for line in lines), engine
    assert "x eager" in lines[1]


def test_bench_at_another_size_builds_its_own_models(exported_variants_run):
    result = bench_infer(exported_variants_run.path, image_size=48, iters=1, batch=2, threads=1, warmup=0)
    assert [r["engine"] for r in result["rows"]] == ENGINES  # the run's 64 px files are not reused at 48 px
    assert result["image_size"] == 48
    # FLOPs scale with pixels: MobileNetV2 at 48 px is ~0.6 GFLOP x (48/224)^2 (+ the small head).
    assert 0.01 < result["gflops_per_image"] < 0.05
    eager = result["rows"][0]
    assert eager["latency_speedup_vs_eager"] == 1.0 and eager["accuracy"] is None
    assert "onnxruntime int8" in format_bench(result)


def test_bench_refuses_bad_sizes(exported_variants_run):
    proc = subprocess.run([sys.executable, "-m", "engine", "bench", "infer", str(exported_variants_run.path),
                           "--image-size", "4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "image size must be between" in proc.stderr
    assert "Traceback" not in proc.stderr
