"""All five insights for one dataset and backbone, the advice they lead to, and where they are stored.

``compute_insight`` runs the parts in order (curve, stages, domain, gain) and times
each; ``advice`` turns the numbers into two or three sentences; ``load_insight`` reads what
``python -m engine insight ... --out`` (started by ``engine.workflow.start_insight``) stored
for the pages (one result per dataset and backbone).
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from engine.workspace import read_json, workspace_root

__all__ = ["compute_insight", "advice", "format_insight", "insight_folder", "load_insight"]

Progress = Callable[[str], None]


def compute_insight(spec: str, backbone: str, image_size: int = 64, draws: int = 5, scratch_sizes: int = 2,
                    scratch_epochs: int = 5, stage_per_class: int = 50, domain_per_class: int = 20, seed: int = 0,
                    feature_engine: str = "auto", progress: Progress | None = None) -> dict:
    """The data-efficiency curve, per-stage probe, domain distance, transfer gain and advice (a JSON dict).

    ``feature_engine``: how uncached frozen features are computed (``engine.features.feature_extractor``)."""
    from engine.data.dataset import load_dataset
    from engine.errors import UserError
    from engine.features import split_features
    from engine.insight.curve import data_efficiency, fit_learning_curve, flattening_point, scratch_baseline
    from engine.insight.domain import domain_report
    from engine.insight.gain import gain_rows
    from engine.insight.stages import stage_probe
    from engine.models import get_spec
    from engine.training.probe import fit_probe

    get_spec(backbone)
    dataset = load_dataset(spec)
    classes = dataset.classes
    if len(classes) < 2:
        raise UserError("the dataset needs at least two classes")
    splits = set(dataset.usable["split"])
    if not {"train", "val"} <= splits:
        raise UserError("the dataset needs a training and a validation split")
    say = progress or (lambda _m: None)
    timings: dict[str, float] = {}
    started = time.monotonic()
    from engine.features import feature_extractor

    def extractor(_images: int):
        return feature_extractor(backbone, image_size, engine=feature_engine)

    make = None if feature_engine == "auto" else extractor  # auto: the feature cache decides
    train = split_features(dataset, "train", backbone, image_size, classes, extractor=make)
    val = split_features(dataset, "val", backbone, image_size, classes, extractor=make)
    C = fit_probe(train.features, train.labels, len(classes), seed=seed).C
    timings["features"] = round(time.monotonic() - started, 1)
    say(f"features ready ({timings['features']} s); probe C = {C}")

    t = time.monotonic()
    curve = data_efficiency(train.features, train.labels, val.features, val.labels, len(classes), draws=draws, C=C,
                            seed=seed, progress=say)
    curve["flattening"] = flattening_point(curve["points"])
    curve["fit"] = fit_learning_curve(curve["points"])
    timings["curve"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    sizes = [p["per_class"] for p in curve["points"]]
    picks = sorted({n for n in (10, 50, sizes[-1]) if n <= sizes[-1]})[:scratch_sizes] if scratch_sizes else []
    curve["scratch"] = scratch_baseline(dataset, backbone, image_size, picks, epochs=scratch_epochs, seed=seed,
                                        progress=say) if picks else []
    timings["scratch"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    stages = stage_probe(dataset, backbone, image_size, max_per_class=stage_per_class, C=C, seed=seed, progress=say)
    timings["stages"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    say("domain: ImageNet head on a sample of the training images")
    domain = domain_report(dataset, backbone, per_class=domain_per_class, seed=seed)
    timings["domain"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    gain = {"runs": gain_rows(spec, backbone), "insight": _gain_from_curve(curve)}
    timings["gain"] = round(time.monotonic() - t, 1)
    result = {"dataset": str(spec), "dataset_name": dataset.name, "backbone": backbone, "image_size": image_size,
              "classes": classes, "curve": curve, "stages": stages, "domain": domain, "gain": gain,
              "timings_s": timings, "created_at": time.time()}
    result["advice"] = advice(result)
    return result


def _gain_from_curve(curve: dict) -> list[dict]:
    """Scratch vs linear probe at the sizes the scratch baseline was trained at (same images, same split)."""
    by_size = {p["per_class"]: p for p in curve["points"]}
    rows = []
    for s in curve.get("scratch", []):
        p = by_size.get(s["per_class"])
        if p is not None:
            rows.append({"per_class": s["per_class"], "scratch": s["mean"], "scratch_se": s["se"],
                         "linear_probe": p["mean"], "linear_probe_se": p["se"],
                         "gain_points": round(100 * (p["mean"] - s["mean"]), 1)})
    return rows


def advice(result: dict) -> list[str]:
    """Two or three sentences that follow from the numbers: mode and epochs, labelling, layers."""
    curve, stages, domain = result["curve"], result["stages"], result["domain"]
    top = curve["points"][-1]
    reading = stages["reading"]
    far = domain["entropy"] >= 0.38
    out = []
    if reading["unfreeze"] > 0 or far:
        epochs = 10 if far else 5
        depth = (f"unfreezing the last {reading['unfreeze']} stages (partial fine-tune)" if reading["unfreeze"] > 0
                 else "a full fine-tune")
        why = "the data is " + domain["reading"] if far else "the late features suit this data less"
        out.append(f"Train with {depth} for about {epochs} epochs: {why}; the linear probe reaches "
                   f"{100 * top['mean']:.1f}% as a floor to beat.")
    else:
        out.append(f"A linear probe is enough here ({100 * top['mean']:.1f}% on validation, seconds to train): the "
                   "data is close to the pretraining data and accuracy rises to the last stage; a fine-tune of "
                   "about 5 epochs may add a little.")
    flat, fit = curve["flattening"], curve["fit"]
    if flat["flat"]:
        out.append(f"Labelling more images is unlikely to pay much: the curve {flat['text']}.")
    elif fit.get("good") and fit.get("extrapolation") and fit["extrapolation"][0]["predicted"] - top["mean"] < 0.02:
        nxt = fit["extrapolation"][0]
        out.append(f"Labelling more buys little: the fitted learning curve predicts {100 * nxt['predicted']:.1f}% at "
                   f"{nxt['per_class']} images per class (now {100 * top['mean']:.1f}%).")
    elif fit.get("good") and fit.get("extrapolation"):
        nxt = fit["extrapolation"][0]
        out.append(f"Labelling more should pay: the fitted learning curve predicts {100 * nxt['predicted']:.1f}% at "
                   f"{nxt['per_class']} images per class (now {100 * top['mean']:.1f}% at {top['per_class']}), with a "
                   f"ceiling near {100 * fit['ceiling']:.1f}%.")
    else:
        out.append("Accuracy is still rising at the largest size, so more labelled images should help.")
    if reading["unfreeze"] > 0:
        out.append(f"For a probe alone, stage {reading['peak_stage']} gives "
                   f"{100 * stages['rows'][reading['peak_stage']]['accuracy']:.1f}% against "
                   f"{100 * stages['rows'][-1]['accuracy']:.1f}% for the last stage.")
    return out[:3]


def format_insight(r: dict) -> str:
    """The result as text for a terminal."""
    c, s, d = r["curve"], r["stages"], r["domain"]
    lines = [f"insight: {r['dataset_name']} with {r['backbone']} at {r['image_size']} px "
             f"({c['val_images']} validation images, chance {100 * c['chance']:.1f}%)",
             "1. data-efficiency curve (linear probe, mean ± std over draws):"]
    for p in c["points"]:
        lines.append(f"   {p['per_class']:>5} per class: {100 * p['mean']:5.1f}% ± {100 * p['std']:.1f} "
                     f"({p['draws']} draws, range {100 * p['min']:.1f}-{100 * p['max']:.1f})")
    for p in c["scratch"]:
        lines.append(f"   scratch {p['per_class']:>5} per class, {p['epochs']} epochs: {100 * p['mean']:5.1f}% "
                     f"± {100 * p['se']:.1f} (binomial s.e.)")
    lines.append(f"   {c['flattening']['text']}")
    fit = c["fit"]
    if fit.get("good"):
        ext = ", ".join(f"{e['per_class']}: {100 * e['predicted']:.1f}%" for e in fit["extrapolation"])
        lines.append(f"   fit {fit['model']}: R² {fit['r2']}, ceiling {100 * fit['ceiling']:.1f}%; predicted {ext}")
    else:
        lines.append(f"   no extrapolation: {fit.get('reason')}")
    lines.append("2. linear probe per stage (input -> output), ± binomial s.e.:")
    lines.append("   " + ", ".join(f"{row['stage']}: {100 * row['accuracy']:.1f}±{100 * row['se']:.1f}"
                                   for row in s["rows"]))
    lines.append(f"   {s['reading']['text']}")
    lines.append(f"3. domain: {d['measure']}: {d['entropy']:.3f} (95% CI {d['entropy_ci'][0]:.3f}-"
                 f"{d['entropy_ci'][1]:.3f}; scikit-image photos {d['reference']['entropy']:.3f}) -> {d['reading']}")
    for row in d["classes"]:
        tops = ", ".join(f"{t['imagenet_class']} ({100 * t['share']:.0f}%)" for t in row["imagenet_top"])
        lines.append(f"   {row['class']:<16} -> {tops}; confidence {row['confidence']:.2f}, "
                     f"entropy {row['entropy']:.2f}")
    lines.append("4. transfer gain:")
    for g in r["gain"]["insight"]:
        lines.append(f"   {g['per_class']} per class: scratch {100 * g['scratch']:.1f}% vs linear probe "
                     f"{100 * g['linear_probe']:.1f}% ({g['gain_points']:+.1f} points)")
    for g in r["gain"]["runs"]:
        ci = f" [{100 * g['ci_low']:.1f}, {100 * g['ci_high']:.1f}]" if g.get("ci_low") is not None else ""
        lines.append(f"   run {g['run']}: {g['kind']} {100 * g['accuracy']:.1f}%{ci}, {g['epochs']} epochs, "
                     f"{g['image_size']} px")
    if not r["gain"]["runs"]:
        lines.append("   no finished runs of this dataset and backbone yet (insight --quick-runs trains three)")
    lines.append("5. advice: " + " ".join(r["advice"]))
    lines.append("time (s): " + ", ".join(f"{k} {v}" for k, v in r["timings_s"].items()))
    return "\n".join(lines)


def insight_folder(spec: str, backbone: str) -> Path:
    """Where the insight of this dataset and backbone lives (one per pair; a new one replaces it)."""
    key = hashlib.sha256(f"{spec}|{backbone}".encode()).hexdigest()[:16]
    return workspace_root() / "insight" / key


def load_insight(spec: str, backbone: str) -> dict | None:
    """The last computed insight of this dataset and backbone, or None."""
    return read_json(insight_folder(spec, backbone) / "result.json")
