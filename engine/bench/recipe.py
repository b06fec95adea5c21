"""``python -m engine bench recipe DATA [DATA ...]``: the product's defaults against what a user would write.

On each dataset, on the same split, image size and epoch budget:

* product linear probe: ``train(mode="linear")`` with its defaults;
* scikit-learn ``LogisticRegression(max_iter=1000)`` on the same cached frozen features;
* product fine-tune: ``train(mode="full")`` with its defaults;
* plain reference fine-tune: :func:`reference_finetune`, the short torchvision script an
  ML engineer would write (AdamW, one-cycle LR, random-resized crops and flips, label
  smoothing, unweighted loss). It shares nothing with the product's recipe on purpose.

Accuracy, balanced accuracy, macro-F1 and wall time are reported side by side, with
product/baseline ratios. Figures are on the dataset's test split when it has one, else
on validation (neither the product nor the reference chooses anything on test).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.data.dataset import load_dataset
from engine.data.tensors import decode_split
from engine.errors import UserError
from engine.features import split_features
from engine.models import create_model, get_spec
from engine.runs import Run
from engine.training.config import TrainConfig
from engine.training.metrics import headline_scores
from engine.training.runner import train

__all__ = ["bench_recipe", "reference_finetune", "format_table", "paired_difference", "METHODS", "VARIANTS"]

METHODS = ("probe", "logreg", "finetune", "reference")
# One piece of the fine-tune recipe changed at a time (TrainConfig fields), each scored against the reference:
# ``--variants bn-adapt,bn-train,...`` adds a ``finetune:NAME`` row per variant.
VARIANTS: dict[str, dict] = {
    "bn-frozen": {"freeze_norm": True, "adapt_norm": False},  # pretrained statistics, kept
    "bn-adapt": {"freeze_norm": True, "adapt_norm": True},  # re-estimated on the training images, then kept
    "bn-train": {"freeze_norm": False, "adapt_norm": False},  # batch statistics while training
    "lr-0.1": {"backbone_lr_mult": 0.1},
    "lr-0.3": {"backbone_lr_mult": 0.3},
    "lr-1": {"backbone_lr_mult": 1.0},
    "aug-none": {"augment": "none"},
    "aug-light": {"augment": "light"},
    "aug-strong": {"augment": "strong"},
    "no-warmup": {"head_warmup": False},
}


def _scores(y_true, y_pred) -> dict:
    """Headline scores, the accuracy's 95 % interval half-width, and the predictions (for paired comparisons)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = headline_scores(y_true, y_pred, int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1)
    acc = scores["accuracy"]
    return {**scores, "accuracy_ci95": float(1.96 * np.sqrt(acc * (1 - acc) / max(len(y_true), 1))),
            "y_true": [int(v) for v in y_true], "y_pred": [int(v) for v in y_pred]}


def paired_difference(a: dict, b: dict) -> tuple[float, float] | None:
    """``a``'s accuracy minus ``b``'s, in points, and the 95 % half-width of that difference.

    Both were scored on the same images, so the interval comes from the images on which
    exactly one of them is right (a paired test): far narrower than two separate intervals.
    None when the two were not scored on the same labels in the same order.
    """
    if a["y_true"] != b["y_true"] or not a["y_true"]:
        return None
    y = np.asarray(a["y_true"])
    d = (np.asarray(a["y_pred"]) == y).astype(float) - (np.asarray(b["y_pred"]) == y).astype(float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return 100 * float(d.mean()), 100 * float(half)


def reference_finetune(train_images: torch.Tensor, train_labels: torch.Tensor, eval_images: torch.Tensor,
                       eval_labels: torch.Tensor, num_classes: int, backbone: str, epochs: int,
                       batch_size: int = 32, lr: float = 1e-3, seed: int = 0, epoch_seconds: list | None = None,
                       epoch_cpu_seconds: list | None = None) -> dict:
    """The plain fine-tune script: every layer trains, one LR, one-cycle schedule. ``epoch_seconds`` and
    ``epoch_cpu_seconds``, when given, receive each epoch's wall and CPU seconds (``bench train`` sets them
    beside the product's)."""
    from torch.utils.data import DataLoader, TensorDataset
    from torchvision.transforms import v2

    torch.manual_seed(seed)
    spec = get_spec(backbone)
    size = train_images.shape[-1]
    model = create_model(backbone, num_classes, pretrained=True, image_size=size)
    train_tf = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                           v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])
    eval_tf = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])

    class Augmented(TensorDataset):
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return train_tf(x), y

    loader = DataLoader(Augmented(train_images, train_labels), batch_size=batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    for _ in range(epochs):
        started, cpu_started = time.perf_counter(), time.process_time()
        model.train()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        if epoch_seconds is not None:
            epoch_seconds.append(time.perf_counter() - started)
        if epoch_cpu_seconds is not None:
            epoch_cpu_seconds.append(time.process_time() - cpu_started)
    model.eval()
    preds = []
    with torch.no_grad():
        for start in range(0, len(eval_images), 64):
            preds.append(model(eval_tf(eval_images[start : start + 64])).argmax(1))
    return _scores(eval_labels.numpy(), torch.cat(preds).numpy())


class _Clock:
    """Wall seconds and this process's CPU seconds (all threads) since it was made. The CPU figure
    moves less than wall time when other work shares the machine, so ratios of it are steadier."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict:
        return {"seconds": time.perf_counter() - self.wall, "cpu_seconds": time.process_time() - self.cpu}


def _product(data: str, mode: str, size: int, backbone: str, workdir: Path, epochs: int | None,
             overrides: dict | None = None) -> dict:
    config = TrainConfig(dataset=data, backbone=backbone, mode=mode, image_size=size, epochs=epochs,
                         **(overrides or {}))
    run = Run(workdir / f"{mode}-{time.time_ns()}")
    run.path.mkdir(parents=True)
    run.write_config(config.to_dict())
    clock = _Clock()
    report = train(config, run)
    return {**clock.read(), "epochs": config.epochs,
            **_scores(report["y_true"], report["y_pred"])}


def bench_recipe(data: str, image_size: int = 128, backbone: str = "mobilenet_v2", methods=METHODS,
                 epochs: int | None = None, progress=print, variants=()) -> dict:
    """Every method on ``data``; returns ``{"dataset", "rows": [{method, accuracy, ..., seconds}], ...}``.
    ``variants``: names from :data:`VARIANTS`, each one more product fine-tune (``finetune:NAME``)."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    dataset = load_dataset(data)
    classes = dataset.classes
    held_out = "test" if dataset.has_test else "val"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-recipe-") as tmp:
        workdir = Path(tmp)
        if "probe" in methods or "logreg" in methods:
            progress(f"{data}: product linear probe")
            probe = _product(data, "linear", image_size, backbone, workdir, None)
            if "probe" in methods:
                rows.append({"method": "probe", **probe})
            if "logreg" in methods:
                from sklearn.linear_model import LogisticRegression

                progress(f"{data}: LogisticRegression on the same cached features")
                f_train = split_features(dataset, "train", backbone, image_size, classes)
                f_eval = split_features(dataset, held_out, backbone, image_size, classes)
                clock = _Clock()
                clf = LogisticRegression(max_iter=1000).fit(f_train.features, f_train.labels)
                rows.append({"method": "logreg", **clock.read(), "epochs": None,
                             **_scores(f_eval.labels, clf.predict(f_eval.features))})
        fine_epochs = int(epochs or TrainConfig(dataset=data, mode="full").epochs or 1)
        if "finetune" in methods or "reference" in methods or variants:
            # Decoded once before either clock starts: both fine-tunes read the same decode cache, so
            # neither pays for the first decode of the dataset.
            for split in ("train", held_out):
                decode_split(dataset, split, image_size, classes)
        if "finetune" in methods:
            progress(f"{data}: product fine-tune ({fine_epochs} epochs)")
            rows.append({"method": "finetune", **_product(data, "full", image_size, backbone, workdir, fine_epochs)})
        for name in variants:
            progress(f"{data}: product fine-tune, variant {name} {VARIANTS[name]} ({fine_epochs} epochs)")
            rows.append({"method": f"finetune:{name}",
                         **_product(data, "full", image_size, backbone, workdir, fine_epochs, VARIANTS[name])})
        if "reference" in methods:
            progress(f"{data}: plain reference fine-tune ({fine_epochs} epochs)")
            clock = _Clock()
            tr = decode_split(dataset, "train", image_size, classes)
            ev = decode_split(dataset, held_out, image_size, classes)
            scores = reference_finetune(tr.images, tr.labels, ev.images, ev.labels, len(classes), backbone,
                                        fine_epochs)
            rows.append({"method": "reference", **clock.read(), "epochs": fine_epochs,
                         **scores})
    by = {r["method"]: r for r in rows}
    ratios = {}
    pairs = [("probe", "logreg"), ("finetune", "reference")] + [(f"finetune:{v}", "reference") for v in variants]
    for product, baseline in pairs:
        if product in by and baseline in by:
            a, b = by[product], by[baseline]
            paired = paired_difference(a, b)
            ratios[f"{product}/{baseline}"] = {
                "accuracy_points": round(100 * (a["accuracy"] - b["accuracy"]), 2),
                "accuracy_points_ci95": round(paired[1], 2) if paired else None,
                "balanced_accuracy_points": round(100 * (a["balanced_accuracy"] - b["balanced_accuracy"]), 2),
                "time_ratio": round(a["seconds"] / b["seconds"], 2) if b["seconds"] else None,
                "cpu_time_ratio": round(a["cpu_seconds"] / b["cpu_seconds"], 2) if b["cpu_seconds"] else None}
    for r in rows:  # the predictions served the paired intervals; the report keeps the scores
        r.pop("y_true"), r.pop("y_pred")
    counts = dataset.usable.groupby("split").size().to_dict()
    return {"dataset": data, "image_size": image_size, "backbone": backbone, "evaluated_on": held_out,
            "images": {k: int(v) for k, v in counts.items()}, "classes": len(classes), "rows": rows,
            "comparisons": ratios}


def format_table(results: list[dict]) -> str:
    """A markdown table: one row per dataset and method, then the comparisons."""
    lines = ["| dataset | method | accuracy (± 95 %) | balanced acc. | macro-F1 | wall s | CPU s |",
             "|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            lines.append(f"| {res['dataset']} | {r['method']} | {100 * r['accuracy']:.1f} ± "
                         f"{100 * r['accuracy_ci95']:.1f} % | {100 * r['balanced_accuracy']:.1f} % | "
                         f"{r['macro_f1']:.3f} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} |")
    lines += ["", "| dataset | comparison | Δ accuracy, points (paired ± 95 %) | Δ balanced acc. (points) "
              "| wall-time ratio | CPU-time ratio |", "|---|---|---|---|---|---|"]
    for res in results:
        for name, c in res["comparisons"].items():
            ci = f" ± {c['accuracy_points_ci95']:.2f}" if c.get("accuracy_points_ci95") is not None else ""
            lines.append(f"| {res['dataset']} | {name} | {c['accuracy_points']:+.2f}{ci} | "
                         f"{c['balanced_accuracy_points']:+.2f} | {c['time_ratio']} | {c['cpu_time_ratio']} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - convenience
    print(json.dumps(bench_recipe("digits"), indent=2))
