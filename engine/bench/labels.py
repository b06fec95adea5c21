"""``python -m engine bench labels DATA [DATA ...]``: does the label check find planted label errors?

For each dataset, a seeded 10 % of the training labels are flipped to another class drawn at random; the
label check (:mod:`engine.dataloop.labels`: out-of-fold probe probabilities into cleanlab's confident
learning) then runs on the noisy training labels and the clean validation ones, as the product checks
every split. Reported, against the planted flips: precision and recall of the flagged training images; the
validation accuracy (clean labels) of the linear probe trained on the clean labels, on the noisy ones, and
on the noisy ones with the flagged images dropped, and how much of what the noise cost the drop recovers;
the seconds of the check with the features cached, also on 2,000 images.
"""
from __future__ import annotations

import time

import numpy as np

from engine.data.dataset import load_dataset
from engine.dataloop.labels import flag_by_confident_learning
from engine.dataloop.oof import out_of_fold_probabilities
from engine.features import split_features
from engine.models import get_spec
from engine.training.probe import fit_probe

__all__ = ["flip_labels", "bench_labels", "format_report", "TIMING_IMAGES"]

TIMING_IMAGES = 2000


def flip_labels(labels: np.ndarray, num_classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, indices flipped): ``fraction`` of them moved to another class drawn uniformly."""
    rng = np.random.default_rng(seed)
    noisy = np.asarray(labels, dtype=np.int64).copy()
    flipped = np.sort(rng.choice(len(noisy), size=int(round(fraction * len(noisy))), replace=False))
    noisy[flipped] = (noisy[flipped] + rng.integers(1, num_classes, size=len(flipped))) % num_classes
    return noisy, flipped


def _probe_accuracy(x, y, k, x_val, y_val) -> float:
    fit = fit_probe(x, y, k)
    return float((fit.logits(x_val).argmax(1) == y_val).mean())


def _interval(p: float, n: int) -> float:
    """Half-width of the 95 % normal interval of a proportion ``p`` of ``n``."""
    return float(1.96 * np.sqrt(max(p * (1 - p), 0.0) / max(n, 1)))


def _check_seconds(features: np.ndarray, labels: np.ndarray, k: int) -> float:
    start = time.perf_counter()
    flag_by_confident_learning(labels, out_of_fold_probabilities(features, labels, k))
    return time.perf_counter() - start


def _one(name: str, backbone: str, size: int, fraction: float, seed: int) -> dict:
    dataset = load_dataset(name)
    classes = dataset.classes
    k = len(classes)
    train = split_features(dataset, "train", backbone, size, classes)
    val = split_features(dataset, "val", backbone, size, classes)
    noisy, flipped = flip_labels(train.labels, k, fraction, seed)
    # The check sees every split, as the product's does (validation labels stay clean); scored on train.
    both_x, both_y = np.concatenate([train.features, val.features]), np.concatenate([noisy, val.labels])
    start = time.perf_counter()
    flagged = flag_by_confident_learning(both_y, out_of_fold_probabilities(both_x, both_y, k, seed=seed))
    seconds = time.perf_counter() - start
    flagged = flagged[: len(noisy)]
    truth = np.zeros(len(noisy), dtype=bool)
    truth[flipped] = True
    hits = int((flagged & truth).sum())
    precision = hits / max(int(flagged.sum()), 1)
    recall = hits / max(len(flipped), 1)
    clean = _probe_accuracy(train.features, train.labels, k, val.features, val.labels)
    noisy_acc = _probe_accuracy(train.features, noisy, k, val.features, val.labels)
    dropped = _probe_accuracy(train.features[~flagged], noisy[~flagged], k, val.features, val.labels)
    cost = clean - noisy_acc
    return {"dataset": name, "train_images": len(noisy), "flipped": len(flipped), "flagged": int(flagged.sum()),
            "precision": precision, "precision_pm": _interval(precision, int(flagged.sum())),
            "recall": recall, "recall_pm": _interval(recall, len(flipped)),
            "val_images": len(val), "acc_clean": clean, "acc_noisy": noisy_acc, "acc_dropped": dropped,
            "acc_pm": _interval(noisy_acc, len(val)),
            "recovered": (dropped - noisy_acc) / cost if cost > 0 else None, "seconds": seconds,
            "features": (both_x, both_y, k)}


def _mean_row(draws: list[dict]) -> dict:
    """The draws of one dataset (one per seed) as one row: means, and 95 % intervals over the draws when
    there are several (else the single draw's binomial ones)."""
    if len(draws) == 1:
        return draws[0]
    row = {key: draws[0][key] for key in ("dataset", "train_images", "flipped", "val_images")}
    for key in ("flagged", "precision", "recall", "acc_clean", "acc_noisy", "acc_dropped", "seconds"):
        row[key] = float(np.mean([d[key] for d in draws]))
    spread = {key: float(1.96 * np.std([d[key] for d in draws], ddof=1) / np.sqrt(len(draws)))
              for key in ("precision", "recall", "acc_dropped")}
    row |= {"precision_pm": spread["precision"], "recall_pm": spread["recall"], "acc_pm": spread["acc_dropped"]}
    cost = row["acc_clean"] - row["acc_noisy"]
    row["recovered"] = (row["acc_dropped"] - row["acc_noisy"]) / cost if cost > 0 else None
    row["seeds"] = len(draws)
    return row


def bench_labels(names: list[str], backbone: str = "mobilenet_v2", image_size: int | None = None,
                 fraction: float = 0.1, seeds: int = 1) -> dict:
    """One row per dataset (the mean over ``seeds`` draws of the flips), and the check's seconds on
    ``TIMING_IMAGES`` cached feature rows."""
    size = int(image_size or get_spec(backbone).input_size)
    draws = {name: [_one(name, backbone, size, fraction, seed) for seed in range(seeds)] for name in names}
    # 2,000 images: the first dataset's train (noisy labels) and validation features, repeated with a small
    # jitter to reach the count (the cost depends on rows and dimensions, not on where they came from).
    x, y, k = draws[names[0]][0]["features"]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(x), size=TIMING_IMAGES, replace=TIMING_IMAGES > len(x))
    x2 = x[pick] + rng.normal(0, 1e-3, size=(TIMING_IMAGES, x.shape[1])).astype(np.float32)
    timing = _check_seconds(x2, y[pick], k)
    for rows in draws.values():
        for row in rows:
            row.pop("features")
    return {"backbone": backbone, "image_size": size, "fraction": fraction, "seeds": seeds,
            "rows": [_mean_row(rows) for rows in draws.values()],
            "timing": {"images": TIMING_IMAGES, "seconds": timing, "from": names[0]}}


def format_report(report: dict) -> str:
    lines = [f"label check: {report['backbone']} at {report['image_size']} px, {report['fraction']:.0%} of training "
             f"labels flipped (seeds 0-{report['seeds'] - 1}, means and 95 % intervals); features cached before "
             "the clock starts",
             "| dataset | train | flipped | flagged | precision | recall | acc clean | acc noisy | acc noisy, "
             "flagged dropped | recovered | check (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        recovered = "n/a" if r["recovered"] is None else f"{r['recovered']:.0%}"
        lines.append(f"| {r['dataset']} | {r['train_images']} | {r['flipped']} | {r['flagged']:.0f} | "
                     f"{r['precision']:.2f} ± {r['precision_pm']:.2f} | {r['recall']:.2f} ± {r['recall_pm']:.2f} | "
                     f"{r['acc_clean']:.1%} | {r['acc_noisy']:.1%} | {r['acc_dropped']:.1%} (± {r['acc_pm']:.1%}) | "
                     f"{recovered} | {r['seconds']:.1f} |")
    t = report["timing"]
    lines.append(f"check on {t['images']:,} images (features of {t['from']}, cached): {t['seconds']:.1f} s")
    return "\n".join(lines)
