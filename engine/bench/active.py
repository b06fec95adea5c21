"""``python -m engine bench active DATA [DATA ...]``: what each way of choosing images to label saves.

The loop is simulated on a labelled dataset with its labels held back as the oracle: the
training split is the unlabelled pool, a few labels per class (seeded) are the start, and each
round the product's probe (:func:`engine.training.probe.fit_probe`, C cross-validated, on cached
frozen features) is refitted on the labels so far, scored on the held-out split (test when the
dataset has one, else validation), and asks for one batch by each strategy of
:mod:`engine.dataloop.active`. Every strategy starts a seed from the same labels.

Reported per dataset: accuracy against labels used (mean over seeds with a 95 % t-interval),
the paired difference to random at every budget (same seed, same start), and the labels each
strategy needed to reach random's accuracy at the largest budget.
"""
from __future__ import annotations

import time

import numpy as np

# Only light imports at the top: the CLI's parser reads ROUNDS and SEEDS from here (torch comes in the functions).
from engine.dataloop.active import DEFAULT_STRATEGY, STRATEGIES, select_batch

__all__ = ["bench_active", "simulate", "format_table", "t_half_width", "ROUNDS", "SEEDS"]

ROUNDS = 24  # batches after the start: random's curve flattens by then on the built-in sets (README table)
SEEDS = 3


def t_half_width(values) -> float:
    """95 % half-width of the mean of ``values`` (Student t; 0 for one value)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return 0.0
    return float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))



def _start_set(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = [rng.choice(np.flatnonzero(labels == c), min(per_class, int((labels == c).sum())), replace=False)
             for c in np.unique(labels)]
    return np.concatenate(picks).astype(np.int64)


def simulate(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray, num_classes: int,
             strategy: str, start: np.ndarray, batch: int, rounds: int, seed: int) -> list[tuple[int, float]]:
    """(labels used, held-out accuracy) after the start and after each of ``rounds`` batches."""
    from engine.evaluation.calibration import softmax
    from engine.training.probe import fit_probe

    labelled = np.asarray(start, dtype=np.int64)
    curve = []
    for r in range(rounds + 1):
        probe = fit_probe(train_x[labelled], train_y[labelled], num_classes, seed=seed)
        acc = float((probe.logits(eval_x).argmax(1) == eval_y).mean())
        curve.append((int(len(labelled)), acc))
        if r == rounds:
            break
        mask = np.ones(len(train_y), bool)
        mask[labelled] = False
        unlabelled = np.flatnonzero(mask)
        probs = softmax(probe.logits(train_x[unlabelled]))
        picked = select_batch(strategy, train_x, labelled, unlabelled, probs, batch, seed=seed * 1000 + r)
        labelled = np.concatenate([labelled, picked])
    return curve


def bench_active(data: str, backbone: str = "mobilenet_v2", image_size: int = 64, seeds: int = SEEDS,
                 start_per_class: int = 2, batch: int | None = None, rounds: int = ROUNDS,
                 strategies: tuple[str, ...] = STRATEGIES, progress=None) -> dict:
    """The simulated loop on ``data`` for each strategy and seed, at most ``rounds`` batches (fewer when the
    pool is small: the largest budget stays within half the pool)."""
    from engine.data.dataset import load_dataset
    from engine.features import split_features

    t0 = time.perf_counter()
    dataset = load_dataset(data)
    classes = dataset.classes
    k = len(classes)
    held_out = "test" if dataset.has_test else "val"
    train = split_features(dataset, "train", backbone, image_size, classes)
    evals = split_features(dataset, held_out, backbone, image_size, classes)
    features_s = time.perf_counter() - t0
    batch = int(batch or 2 * k)
    # Past half the pool every strategy holds much the same images and the choice stops mattering (a small
    # pool would run out): each dataset's rounds stop there, so one command serves pools of any size.
    rounds = max(1, min(rounds, (len(train) // 2 - start_per_class * k) // batch))
    curves: dict[str, list[list[tuple[int, float]]]] = {s: [] for s in strategies}
    t1 = time.perf_counter()
    for seed in range(seeds):
        start = _start_set(train.labels, start_per_class, np.random.default_rng(seed))
        for s in strategies:
            curves[s].append(simulate(train.features, train.labels, evals.features, evals.labels, k, s, start,
                                      batch, rounds, seed))
        if progress:
            progress(f"{data}: seed {seed + 1}/{seeds} done ({time.perf_counter() - t1:.0f} s)")
    budgets = [n for n, _ in curves[strategies[0]][0]]
    acc = {s: np.array([[a for _, a in c] for c in curves[s]]) for s in strategies}  # (seeds, budgets)
    rows = []
    base = acc.get("random")
    target = float(base[:, -1].mean()) if base is not None else None
    for s in strategies:
        mean = acc[s].mean(0)
        row: dict = {"strategy": s, "accuracy": [round(float(m), 4) for m in mean],
               "ci95": [round(t_half_width(acc[s][:, j]), 4) for j in range(len(budgets))]}
        if base is not None:
            diff = acc[s] - base
            row["diff_vs_random"] = [round(float(d), 4) for d in diff.mean(0)]
            row["diff_ci95"] = [round(t_half_width(diff[:, j]), 4) for j in range(len(budgets))]
            # Worse than random beyond the interval: the paired difference's upper end is below zero.
            row["worse_than_random_at"] = [b for b, d, h in zip(budgets, row["diff_vs_random"], row["diff_ci95"])
                                           if d + h < 0]
            reached = [b for b, m in zip(budgets, mean) if m >= target]
            row["labels_to_match_random"] = reached[0] if reached else None
            row["share_of_random_labels"] = round(reached[0] / budgets[-1], 3) if reached else None
        rows.append(row)
    return {"dataset": data, "backbone": backbone, "image_size": image_size, "classes": k,
            "pool_images": int(len(train)), "eval_split": held_out, "eval_images": int(len(evals)),
            "seeds": seeds, "start_per_class": start_per_class, "batch": batch, "rounds": rounds, "budgets": budgets,
            "random_final_accuracy": target, "default": DEFAULT_STRATEGY, "rows": rows,
            "features_s": round(features_s, 1), "simulate_s": round(time.perf_counter() - t1, 1)}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def format_table(results: list[dict]) -> str:
    """Markdown: accuracy (± 95 %) per budget for each strategy, and labels needed to match random."""
    out = []
    for r in results:
        out.append(f"\n{r['dataset']} ({r['classes']} classes, pool {r['pool_images']}, scored on {r['eval_images']} "
                   f"{r['eval_split']} images, {r['backbone']} {r['image_size']} px, {r['seeds']} seeds, "
                   f"features {r['features_s']} s, simulation {r['simulate_s']} s)")
        out.append("| strategy | " + " | ".join(f"{b} labels" for b in r["budgets"])
                   + " | labels to match random's final | share of random's labels | worse than random at |")
        out.append("|---" * (len(r["budgets"]) + 4) + "|")
        for row in r["rows"]:
            name = row["strategy"] + (" (default)" if row["strategy"] == r["default"] else "")
            cells = [f"{_pct(m)} ± {_pct(h)}" for m, h in zip(row["accuracy"], row["ci95"])]
            share = row.get("share_of_random_labels")
            worse = row.get("worse_than_random_at") or []
            out.append(f"| {name} | " + " | ".join(cells)
                       + f" | {row.get('labels_to_match_random') or 'not reached'} | "
                       + (f"{100 * share:.0f} %" if share is not None else "-") + " | "
                       + (", ".join(map(str, worse)) if worse else "never") + " |")
    return "\n".join(out)
