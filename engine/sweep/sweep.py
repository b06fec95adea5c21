"""The quick probe sweep: which of a few loadable backbones suits this dataset, at what speed.

For each backbone: the frozen features of the train and validation splits (the
feature cache: computed once, onnxruntime on CPU, the GPU when there is one), the
converged cross-validated linear probe (``fit_probe``), its validation accuracy,
balanced accuracy and macro-F1, and the feature-extraction latency measured on this
host (:func:`engine.features.latency.measure_latency`, cached). The result names the
Pareto front (no other backbone both more accurate and faster) and recommends in one
sentence: the most accurate, and the fastest within one point of it.

In the background (a page) it is a task (``engine.workflow.start_sweep`` in :func:`sweep_folder`);
on the command line ``python -m engine sweep DATA --backbones a,b,c [--json]``.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path


from engine.errors import UserError
from engine.training.metrics import headline_scores

__all__ = ["run_sweep", "recommend", "pareto_front", "format_sweep", "sweep_folder",
           "latest_sweep_file", "latest_sweep", "progress_writer", "check_backbones", "MIN_BACKBONES", "MAX_BACKBONES",
           "ONE_POINT"]

MIN_BACKBONES, MAX_BACKBONES = 2, 6
ONE_POINT = 0.01  # "within one point of the best": one percentage point of accuracy
LATENCY_KEY = "ort_ms_b1"
SWEEP_VERSION = 1
# (backbone, done, total, stage): one progress bar per backbone.
Progress = Callable[[str, int, int, str], None]


def check_backbones(backbones: list[str]) -> list[str]:
    """2 to 6 distinct registered backbones whose weights load now; else one clear UserError."""
    from engine.models import get_spec
    from engine.models import availability

    names = list(dict.fromkeys(b.strip() for b in backbones if b.strip()))
    if not MIN_BACKBONES <= len(names) <= MAX_BACKBONES:
        raise UserError(f"a sweep compares {MIN_BACKBONES} to {MAX_BACKBONES} backbones; got {len(names)}")
    for name in names:
        ok, words = availability(get_spec(name))
        if not ok:
            raise UserError(f"'{name}' cannot be swept: its weights are not on this machine ({words})")
    return names


def pareto_front(rows: list[dict], latency: str = LATENCY_KEY) -> list[str]:
    """Backbones no other beats on both accuracy (higher) and latency (lower)."""
    front = []
    for r in rows:
        dominated = any(o is not r and o["accuracy"] >= r["accuracy"] and o[latency] <= r[latency]
                        and (o["accuracy"] > r["accuracy"] or o[latency] < r[latency]) for o in rows)
        if not dominated:
            front.append(r["backbone"])
    return front


def recommend(rows: list[dict], latency: str = LATENCY_KEY) -> dict:
    """The most accurate backbone and the fastest within one point of it, with the sentence."""
    best = max(rows, key=lambda r: (round(r["accuracy"], 6), -r[latency]))
    close = [r for r in rows if r["accuracy"] >= best["accuracy"] - ONE_POINT - 1e-9]
    fastest = min(close, key=lambda r: (r[latency], -r["accuracy"]))
    sentence = (f"best accuracy: {best['backbone']} ({100 * best['accuracy']:.1f}%, "
                f"{best[latency]:.1f} ms/image); ")
    if fastest is best:
        sentence += f"fastest within one point of the best: {best['backbone']} too"
    else:
        sentence += (f"fastest within one point of the best: {fastest['backbone']} "
                     f"({100 * fastest['accuracy']:.1f}%, {fastest[latency]:.1f} ms/image, "
                     f"{best[latency] / max(fastest[latency], 1e-9):.1f}x faster)")
    return {"best": best["backbone"], "fastest_within_one_point": fastest["backbone"], "sentence": sentence + "."}


def _probe_row(dataset, name: str, image_size: int, classes: list[str], seed: int, say, progress) -> dict:
    from engine.features import split_features
    from engine.models import get_spec
    from engine.training.probe import fit_probe

    spec = get_spec(name)
    t0 = time.perf_counter()
    train = split_features(dataset, "train", name, image_size, classes, progress=say)
    val = split_features(dataset, "val", name, image_size, classes, progress=say)
    t_features = time.perf_counter() - t0
    if len(train) == 0 or len(val) == 0:
        raise UserError(f"'{dataset.name}' needs images in both its train and validation splits to be swept")
    if progress:
        progress(name, 0, 1, "probe")
    t1 = time.perf_counter()
    probe = fit_probe(train.features, train.labels, len(classes), seed=seed)
    pred = probe.logits(val.features).argmax(1)
    t_probe = time.perf_counter() - t1
    return {"version": SWEEP_VERSION, "backbone": name, "family": spec.family,
            **headline_scores(val.labels, pred, len(classes)),
            "feature_dim": int(train.features.shape[1]), "C": probe.C,
            "params_m": spec.params_m, "gflops": spec.gflops, "imagenet_top1": spec.imagenet_top1,
            "train_images": int(len(train)), "val_images": int(len(val)),
            "features_cached": bool(train.cached and val.cached), "probe_cached": False,
            "feature_seconds": round(t_features, 2), "probe_seconds": round(t_probe, 2)}


def run_sweep(data: str, backbones: list[str], image_size: int = 224, val_fraction: float = 0.2, seed: int = 0,
              progress: Progress | None = None, measure: bool = True) -> dict:
    """Probe every backbone on ``data``'s train split, score on validation; see the module docstring."""
    from engine.data.dataset import load_dataset
    from engine.features.extract import backbone_key
    from engine.features.latency import measure_latency
    from engine.workspace import read_json, write_json_atomic

    if not 16 <= image_size <= 1024:
        raise UserError(f"image size must be between 16 and 1024 px, got {image_size}")
    names = check_backbones(backbones)
    t_start = time.perf_counter()
    dataset = load_dataset(data, val_fraction=val_fraction, seed=seed)
    classes = dataset.classes
    rows = []
    n_train = n_val = 0
    for name in names:
        say = (lambda d, t, stage, name=name: progress(name, d, t, stage)) if progress else None
        row_file = _sweeps_dir() / "rows" / f"{dataset.fingerprint()}-{backbone_key(name, image_size)}-{seed}.json"
        row = read_json(row_file) if row_file.is_file() else None
        if row is not None and row.get("version") == SWEEP_VERSION:  # same features, same deterministic probe
            row = {**row, "features_cached": True, "probe_cached": True}
            n_train, n_val = row["train_images"], row["val_images"]
        else:
            row = _probe_row(dataset, name, image_size, classes, seed, say, progress)
            n_train, n_val = row["train_images"], row["val_images"]
            write_json_atomic(row_file, row)
        if measure:
            if progress:
                progress(name, 0, 1, "latency")
            lat = measure_latency(name, image_size)
            row.update({k: lat[k] for k in ("ort_ms_b1", "ort_ms_b32", "eager_ms_b1", "eager_ms_b32",
                                            "eager_over_ort_b1", "eager_over_ort_b32")})
        if progress:
            progress(name, 1, 1, "done")
        rows.append(row)
    result = {"dataset": str(data), "image_size": int(image_size), "classes": classes,
              "train_images": n_train, "val_images": n_val, "rows": rows,
              "seconds": round(time.perf_counter() - t_start, 2), "finished_at": time.time()}
    if measure:
        result["pareto"] = pareto_front(rows)
        result["recommendation"] = recommend(rows)
    return result


def format_sweep(result: dict) -> str:
    lines = [f"sweep of {result['dataset']} at {result['image_size']} px: {result['train_images']} train / "
             f"{result['val_images']} validation images, {result['seconds']:.1f} s",
             f"  {'backbone':<20}{'acc':>7}{'bal.acc':>9}{'F1':>7}{'ORT ms b1':>11}{'b32':>8}"
             f"{'eager/ORT':>11}{'params M':>10}{'IN top1':>9}  features"]
    for r in result["rows"]:
        lat = (f"{r['ort_ms_b1']:>11.2f}{r['ort_ms_b32']:>8.2f}{r['eager_over_ort_b32']:>10.1f}x"
               if "ort_ms_b1" in r else f"{'':>30}")
        pareto = " *" if r["backbone"] in result.get("pareto", []) else ""
        features = "cached" if r["features_cached"] else f"computed in {r['feature_seconds']:.1f} s"
        lines.append(f"  {r['backbone'] + pareto:<20}{100 * r['accuracy']:>7.1f}{100 * r['balanced_accuracy']:>9.1f}"
                     f"{100 * r['macro_f1']:>7.1f}{lat}{r['params_m'] or 0:>10.2f}{r['imagenet_top1'] or 0:>9.1f}"
                     f"  {features}")
    if "recommendation" in result:
        lines.append("  (* on the accuracy/latency Pareto front)")
        lines.append(result["recommendation"]["sentence"])
    return "\n".join(lines)


# --- the background task --------------------------------------------------------------------------------------


def _sweeps_dir() -> Path:
    from engine.workspace import cache_dir

    return cache_dir() / "sweeps"


def sweep_folder(data: str, backbones: list[str], image_size: int) -> Path:
    key = json.dumps({"data": str(data), "backbones": list(backbones), "size": int(image_size)}, sort_keys=True)
    return _sweeps_dir() / hashlib.sha256(key.encode()).hexdigest()[:16]


def latest_sweep_file(data: str) -> Path:
    return _sweeps_dir() / f"latest-{hashlib.sha256(str(data).encode()).hexdigest()[:16]}.json"


def latest_sweep(data: str) -> Path | None:
    """The folder of the last sweep started on ``data`` (it survives a refresh), or None."""
    from engine.workspace import read_json

    pointer = read_json(latest_sweep_file(data)) or {}
    folder = Path(pointer["folder"]) if pointer.get("folder") else None
    return folder if folder is not None and folder.is_dir() else None


def progress_writer(path: Path, names: list[str], every_s: float = 0.5) -> Progress:
    """A progress callback that keeps ``path`` (JSON) up to date, at most every ``every_s`` seconds."""
    from engine.workspace import write_json_atomic

    state = {n: {"done": 0, "total": 1, "stage": "waiting"} for n in names}
    last = [0.0]

    def update(name: str, done: int, total: int, stage: str) -> None:
        state[name] = {"done": int(done), "total": int(total), "stage": stage}
        now = time.monotonic()
        if now - last[0] >= every_s or stage == "done" or done == total:
            last[0] = now
            write_json_atomic(path, state)

    write_json_atomic(path, state)
    return update
