"""``python -m engine bench infer RUN_DIR``: inference speed of one run, eager vs onnxruntime.

Measured in one process, same thread count for every engine: PyTorch eager
(the baseline), onnxruntime fp32 and int8 (and fp16 when exported). Batch-1
latency (median of ``iters`` calls) and batch-N throughput, the ratios to
eager, and achieved GFLOP/s against the model's FLOPs (counted with
``torch.utils.flop_counter``, 2 FLOPs per multiply-add) and against a dense
fp32 matrix multiply measured on the same CPU as a practical ceiling.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.runs import Run
from engine.workspace import read_json

__all__ = ["bench_infer", "format_bench", "count_flops", "gemm_gflops"]


def count_flops(model: torch.nn.Module, size: int) -> float:
    """FLOPs of one image at ``size`` px (multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def gemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Best-of fp32 GEMM rate: what this CPU and torch's BLAS reach on dense work."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _time_calls(fn: Callable[[], object], iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _ensure_models(run: Run, model: torch.nn.Module, size: int, workdir: Path, say) -> dict[str, Path]:
    """The run's exported files when they match ``size``; otherwise fresh ones in ``workdir``."""
    from engine.data.tensors import load_split
    from engine.onnx_io import onnx_export
    from engine.export.quantize import quantize_int8
    from engine.export.variants import variant_path
    from engine.training.augment import normalize

    config, resolved = run.config(), run.resolved()
    paths = {}
    native = size == resolved.image_size
    for v in ("fp32", "int8", "fp16"):
        p = variant_path(run, v)
        if native and p.is_file():
            paths[v] = p
    if "fp32" not in paths:
        say(f"exporting fp32 at {size} px for the benchmark")
        paths["fp32"] = workdir / "model.onnx"
        onnx_export(model, torch.randn(2, 3, size, size), paths["fp32"])
    if "int8" not in paths:
        say(f"quantising int8 at {size} px for the benchmark (calibrated on 64 training images)")
        train = load_split(config, "train", size, resolved.classes)
        mean, std = resolved.mean, resolved.std
        paths["int8"] = workdir / "model.int8.onnx"
        quantize_int8(paths["fp32"], paths["int8"], normalize(train.images[:64], mean, std).numpy())
    return paths


def bench_infer(
    run_dir: Path | str,
    image_size: int | None = None,
    iters: int = 30,
    batch: int = 32,
    threads: int | None = None,
    warmup: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict:
    import onnxruntime as ort

    from engine.training.checkpoint import load_checkpoint_model

    say = progress or (lambda message: None)
    run = Run(run_dir)
    config = run.config()
    if not run.best_checkpoint.is_file():
        raise UserError(f"run '{run.id}' has no trained weights yet; train it first")
    if iters < 1 or batch < 1:
        raise UserError("--iters and --batch must be at least 1")
    resolved = run.resolved()
    size = int(image_size or resolved.image_size)
    if not 16 <= size <= 1024:
        raise UserError(f"image size must be between 16 and 1024 px, got {size}")
    threads = int(threads or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    model, _cfg, classes = load_checkpoint_model(run.best_checkpoint)
    flops = count_flops(model, size)
    gemm = gemm_gflops()
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    xb = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    parity = read_json(run.export_dir / "parity.json", default={}) or {}
    native = size == resolved.image_size
    accuracy = {v: r.get("accuracy") for v, r in (parity.get("variants") or {}).items()} if native else {}

    rows = []

    def measure(engine: str, fn1, fnb, acc):
        say(f"timing {engine}")
        lat = _time_calls(fn1, iters, warmup)
        thr = _time_calls(fnb, max(1, iters // 4) if batch > 1 else iters, min(warmup, 2))
        rows.append({"engine": engine,
                     "latency_ms_b1": 1000 * statistics.median(lat),
                     "latency_ms_b1_p90": 1000 * float(np.percentile(lat, 90)),
                     f"throughput_img_s_b{batch}": batch / statistics.median(thr),
                     "accuracy": acc})

    with torch.inference_mode():
        t1, tb = torch.from_numpy(x1), torch.from_numpy(xb)
        measure("pytorch eager fp32", lambda: model(t1), lambda: model(tb),
                parity.get("pytorch_accuracy") if accuracy else None)

    with tempfile.TemporaryDirectory(prefix="ts-bench-") as tmp:
        paths = _ensure_models(run, model, size, Path(tmp), say)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        for v in ("fp32", "int8", "fp16"):
            if v not in paths:
                continue
            session = ort.InferenceSession(str(paths[v]), sess_options=options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            measure(f"onnxruntime {v}", lambda: session.run(None, {name: x1}), lambda: session.run(None, {name: xb}),
                    accuracy.get(v))

    eager = rows[0]
    key = f"throughput_img_s_b{batch}"
    for r in rows:
        r["latency_speedup_vs_eager"] = eager["latency_ms_b1"] / r["latency_ms_b1"]
        r["throughput_speedup_vs_eager"] = r[key] / eager[key]
        r[f"gflop_s_b{batch}"] = r[key] * flops / 1e9
        r["gflop_s_b1"] = flops / 1e9 / (r["latency_ms_b1"] / 1000)
        r["pct_of_gemm"] = 100 * r[f"gflop_s_b{batch}"] / gemm
    return {"run": run.id, "backbone": config["backbone"], "image_size": size, "classes": len(classes),
            "threads": threads, "batch": batch, "iters": iters, "gflops_per_image": flops / 1e9,
            "gemm_gflop_s": gemm, "onnxruntime": ort.__version__, "torch": torch.__version__, "rows": rows}


def format_bench(result: dict) -> str:
    b = result["batch"]
    head = (f"{result['backbone']} at {result['image_size']} px, {result['classes']} classes, "
            f"{result['threads']} threads, {result['iters']} iters; {result['gflops_per_image']:.3f} GFLOPs/image "
            f"(= {result['gflops_per_image'] / 2:.3f} GMACs); dense fp32 GEMM on this CPU: "
            f"{result['gemm_gflop_s']:.1f} GFLOP/s; torch {result['torch']}, onnxruntime {result['onnxruntime']}")
    cols = (f"{'engine':<22}{'b1 ms':>9}{'b1 p90':>9}{'x eager':>9}{f'b{b} img/s':>11}{'x eager':>9}"
            f"{'GFLOP/s b1':>12}{f'GFLOP/s b{b}':>13}{'% GEMM':>8}{'val acc':>9}")
    lines = [head, cols]
    for r in result["rows"]:
        acc = "" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
        lines.append(f"{r['engine']:<22}{r['latency_ms_b1']:>9.2f}{r['latency_ms_b1_p90']:>9.2f}"
                     f"{r['latency_speedup_vs_eager']:>8.2f}x{r[f'throughput_img_s_b{b}']:>11.1f}"
                     f"{r['throughput_speedup_vs_eager']:>8.2f}x{r['gflop_s_b1']:>12.1f}{r[f'gflop_s_b{b}']:>13.1f}"
                     f"{r['pct_of_gemm']:>7.1f}%{acc:>9}")
    return "\n".join(lines)
