"""The dataset health report: what in the data would quietly ruin a model.

Everything here reads the manifest (content hash, 64-bit perceptual hash, header facts
per file), so the report costs one pass over the files, cached by
:func:`engine.data.dataset.load_dataset`, plus table arithmetic. The report is
a JSON-ready dict; the Dataset page and ``python -m engine inspect --json``
show the same one.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from engine.data.dataset import Dataset, load_dataset
from engine.data.scan import check_label
from engine.data.images import hamming

__all__ = [
    "NEAR_DUPLICATE_BITS",
    "TINY_CLASS",
    "IMBALANCE_RATIO",
    "class_weights",
    "inverse_frequency_weights",
    "health_check",
    "health_report",
    "exact_duplicates",
    "near_duplicates",
    "flagged_images",
]

# Of the 64 pHash bits, how many may differ for two images to count as
# near-duplicates. Resizing and JPEG re-encoding moved at most 2 bits in our
# checks; 3 keeps false matches rare even among 28 px Fashion-MNIST items.
NEAR_DUPLICATE_BITS = 3
# Fewer usable images than this in a class: too few to learn or to measure.
TINY_CLASS = 5
# Imbalance (largest / smallest training class) from which the loss is weighted by class.
IMBALANCE_RATIO = 1.5
_MAX_PAIRS = 20_000
_MAX_EXAMPLES = 50
_CHUNK = 512


def inverse_frequency_weights(counts) -> np.ndarray:
    """Per class ``N / (K * n_k)`` for training-image counts ``n_k``: the mean weight over images is 1.

    A class without images gets 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = counts.sum() / (len(counts) * counts[present])
    return weights


def class_weights(counts) -> np.ndarray | None:
    """The loss weights to train with, from per-class training-image counts (in class order).

    Inverse-frequency weights (:func:`inverse_frequency_weights`) when the largest
    class has at least ``IMBALANCE_RATIO`` times the images of the smallest;
    None when the classes are balanced enough (or one is empty), i.e. plain loss.
    Training and the health report both decide with this function.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) == 0 or counts.min() <= 0 or counts.max() / counts.min() < IMBALANCE_RATIO:
        return None
    return inverse_frequency_weights(counts)


def _pair_kind(a: pd.Series, b: pd.Series) -> str:
    if a["label"] != b["label"]:
        return "conflicting_labels"
    if a["split"] != b["split"]:
        return "across_splits"
    return "within_class"


def exact_duplicates(dataset: Dataset) -> pd.DataFrame:
    """Pairs (first copy, other copy) of files with identical bytes, with their kind."""
    usable = dataset.usable
    dup = usable[usable.duplicated("hash", keep=False) & (usable["hash"] != "")]
    rows = []
    for _hash, group in dup.groupby("hash", sort=False):
        first = group.iloc[0]
        for _, other in group.iloc[1:].iterrows():
            rows.append({"path": first["path"], "other": other["path"], "label": first["label"],
                         "other_label": other["label"], "split": first["split"], "other_split": other["split"],
                         "distance": 0, "kind": _pair_kind(first, other)})
    return pd.DataFrame(rows, columns=["path", "other", "label", "other_label", "split", "other_split",
                                       "distance", "kind"])


def near_duplicates(dataset: Dataset, max_bits: int = NEAR_DUPLICATE_BITS) -> tuple[pd.DataFrame, int]:
    """Pairs of different files whose 64-bit pHashes differ in at most ``max_bits`` bits.

    All pairs are compared in blocks with a popcount of XORs (10,000 images is
    50 M comparisons, well under a second). Returns the first ``_MAX_PAIRS``
    pairs and the total count.
    """
    usable = dataset.usable.reset_index(drop=True)
    hashes = usable["phash"].to_numpy(dtype=np.int64)
    content = usable["hash"].to_numpy()
    found_i: list[int] = []
    found_j: list[int] = []
    found_d: list[int] = []
    total = 0
    for start in range(0, len(hashes), _CHUNK):
        block = hashes[start : start + _CHUNK]
        dist = hamming(block[:, None], hashes[None, :])
        i, j = np.nonzero(dist <= max_bits)
        i = i + start
        keep = (j > i) & (content[i] != content[j])  # identical bytes are exact duplicates
        i, j = i[keep], j[keep]
        total += len(i)
        room = _MAX_PAIRS - len(found_i)
        if room > 0:
            found_i.extend(i[:room])
            found_j.extend(j[:room])
            found_d.extend(dist[i[:room] - start, j[:room]])
    a, b = usable.iloc[found_i].reset_index(drop=True), usable.iloc[found_j].reset_index(drop=True)
    pairs = pd.DataFrame({"path": a["path"], "other": b["path"], "label": a["label"], "other_label": b["label"],
                          "split": a["split"], "other_split": b["split"],
                          "distance": np.asarray(found_d, dtype=int)})
    pairs["kind"] = np.where(pairs["label"] != pairs["other_label"], "conflicting_labels",
                             np.where(pairs["split"] != pairs["other_split"], "across_splits", "within_class"))
    return pairs, total


def _stats(values: pd.Series) -> dict | None:
    if values.empty:
        return None
    return {"min": float(values.min()), "median": float(values.median()), "max": float(values.max())}


def _kind_counts(pairs: pd.DataFrame) -> dict:
    counts = pairs["kind"].value_counts() if len(pairs) else pd.Series(dtype=int)
    return {k: int(counts.get(k, 0)) for k in ("within_class", "conflicting_labels", "across_splits")}


def _examples(pairs: pd.DataFrame) -> list[dict]:
    # The dangerous kinds first: a wrong label or a leak matters more than a repeat.
    order = {"conflicting_labels": 0, "across_splits": 1, "within_class": 2}
    ranked = pairs.assign(_o=pairs["kind"].map(order)).sort_values(["_o", "distance"], kind="stable")
    return ranked.drop(columns="_o").head(_MAX_EXAMPLES).to_dict("records")


def flagged_images(dataset: Dataset, exact: pd.DataFrame, near: pd.DataFrame) -> pd.DataFrame:
    """One row per (file, reason) a user should look at: the flagged gallery and table."""
    rows = []
    bad = dataset.manifest[dataset.manifest["status"] != "ok"]
    rows += [{"path": r.path, "label": r.label, "split": r.split, "reason": r.status} for r in bad.itertuples()]
    names = {"within_class": "duplicate within its class", "conflicting_labels": "duplicate with another label",
             "across_splits": "duplicate across train/val (leakage)"}
    for pairs, prefix in ((exact, "exact"), (near, "near")):
        for r in pairs.itertuples():
            reason = f"{prefix} {names[r.kind]}: {r.path} ({r.label}, {r.split})"
            rows.append({"path": r.other, "label": r.other_label, "split": r.other_split, "reason": reason})
    counts = dataset.usable["label"].value_counts()
    for label, n in counts.items():
        if n < TINY_CLASS:
            for r in dataset.usable[dataset.usable["label"] == label].itertuples():
                rows.append({"path": r.path, "label": r.label, "split": r.split,
                             "reason": f"class has only {n} image(s)"})
    return pd.DataFrame(rows, columns=["path", "label", "split", "reason"])


def health_report(dataset: Dataset) -> dict:
    """The health report of an already loaded dataset (see module docstring)."""
    manifest, usable = dataset.manifest, dataset.usable
    errors: list[str] = []
    warnings: list[str] = list(dataset.problems)

    counts = usable.groupby(["split", "label"]).size().unstack(fill_value=0)
    train = usable.loc[usable["split"] == "train", "label"].value_counts()
    train = train.reindex(dataset.classes, fill_value=0)
    ratio = float(train.max() / train.min()) if len(train) and train.min() > 0 else float("inf")
    weights = {str(c): round(float(w), 4) for (c, n), w in zip(train.items(), inverse_frequency_weights(train))
               if n > 0}
    suggest_weights = class_weights(train.to_numpy()) is not None
    if suggest_weights:
        warnings.append(f"classes are imbalanced: the largest training class has {ratio:.1f}x the images of "
                        f"the smallest; consider the suggested class weights")

    totals = usable["label"].value_counts()
    tiny = sorted(str(c) for c, n in totals.items() if n < TINY_CLASS)
    if tiny:
        warnings.append(f"tiny class(es) with fewer than {TINY_CLASS} images: {', '.join(tiny)}; "
                        "add images or the model cannot learn or be measured on them")
    val_classes = set(usable.loc[usable["split"] == "val", "label"])
    no_val = [c for c in dataset.classes if c not in val_classes]
    if no_val:
        warnings.append(f"class(es) with no validation images (not measured): {', '.join(no_val)}")
    if len(dataset.classes) < 2:
        errors.append("a classifier needs at least two classes")

    bad = manifest[manifest["status"] != "ok"]
    if len(bad):
        warnings.append(f"{len(bad)} file(s) are unreadable or unusable and are left out of training")
    bad_labels = sorted({str(lbl) for lbl in manifest["label"] if check_label(str(lbl))})

    exact = exact_duplicates(dataset)
    near, near_total = near_duplicates(dataset)
    exact_kinds, near_kinds = _kind_counts(exact), _kind_counts(near)
    if exact_kinds["conflicting_labels"] or near_kinds["conflicting_labels"]:
        warnings.append(f"{exact_kinds['conflicting_labels']} exact and {near_kinds['conflicting_labels']} near "
                        "duplicate pair(s) carry different labels: at least one of each pair is mislabelled")
    if exact_kinds["across_splits"] or near_kinds["across_splits"]:
        warnings.append(f"{exact_kinds['across_splits']} exact and {near_kinds['across_splits']} near duplicate "
                        "pair(s) sit in both train and validation: validation accuracy will be optimistic")
    if exact_kinds["within_class"]:
        warnings.append(f"{exact_kinds['within_class']} exact duplicate file(s) within a class: they count twice")

    aspect = usable["width"] / usable["height"].where(usable["height"] > 0)
    flagged = flagged_images(dataset, exact, near)
    return {
        "ok": not errors,
        "errors": errors,
        "warnings": warnings,
        "num_files": int(len(manifest)),
        "num_usable": int(len(usable)),
        "balance": {
            "counts": {str(s): {str(k): int(v) for k, v in row.items()} for s, row in counts.iterrows()},
            "train_counts": {str(k): int(v) for k, v in train.items()},
            "imbalance_ratio": ratio if np.isfinite(ratio) else None,
            "class_weights": weights,
            "suggest_class_weights": suggest_weights,
        },
        "split": {
            "source": dataset.split_source,
            "val_fraction": dataset.val_fraction if dataset.split_source == "generated" else None,
            "seed": dataset.seed if dataset.split_source == "generated" else None,
            "sizes": {str(k): int(v) for k, v in usable["split"].value_counts().items()},
        },
        "images": {
            "width": _stats(usable["width"]),
            "height": _stats(usable["height"]),
            "aspect_ratio": _stats(aspect.dropna()),
            "modes": {str(k): int(v) for k, v in usable["mode"].value_counts().items()},
            "file_bytes": {**(_stats(usable["bytes"]) or {}), "total": int(usable["bytes"].sum())},
        },
        "unreadable": bad[["path", "label", "status"]].to_dict("records"),
        "bad_labels": bad_labels,
        "tiny_classes": tiny,
        "duplicates": {
            "exact": {"pairs": int(len(exact)), **exact_kinds, "examples": _examples(exact)},
            "near": {"pairs": int(near_total), **near_kinds, "max_bits": NEAR_DUPLICATE_BITS,
                     "examples": _examples(near)},
        },
        "flagged": {"count": int(flagged["path"].nunique()),
                    "examples": flagged.head(_MAX_EXAMPLES * 4).to_dict("records")},
    }


def health_check(spec, val_fraction: float = 0.2, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> tuple[Dataset, dict]:
    """Load (hashing new files, with ``progress``) and report in one call."""
    dataset = load_dataset(spec, val_fraction=val_fraction, seed=seed, progress=progress)
    return dataset, health_report(dataset)
