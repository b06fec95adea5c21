"""``python -m engine bench train``: training throughput on the real data path vs synthetic data.

Both measurements run in the same process on the same model and optimiser
(full fine-tune, AdamW, the device's autocast/channels_last setup):

* real: the decoded uint8 tensor cache of a built-in dataset, batches sliced,
  augmented ("light" preset) and normalised on the device — what training does;
* synthetic: one normalised float batch already in device memory (the ceiling).

real/synthetic is the share of the model's speed the data path keeps (target >= 0.8).
Weights are random by default: throughput does not depend on weight values, and
most backbones' pretrained weights are not available offline.

Then, with ``epochs`` (default 3), whole epochs: the product's ``train(mode="full")`` (its
defaults, its loop, run-directory writes and all; images/s of each epoch's training pass,
from metrics.jsonl) against the plain reference script's epochs
(:func:`engine.bench.recipe.reference_finetune`, a ``DataLoader`` over the same decoded
images, same size and batch), one after the other in the same process, per epoch, wall and
CPU seconds. Both must hold their speed from the first epoch to the last.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from engine.data.dataset import load_dataset
from engine.data.tensors import decode_split
from engine.models import create_model, get_spec
from engine.training.augment import augment_batch, normalize
from engine.device import resolve_device

__all__ = ["bench_train", "bench_epochs", "format_report", "format_epochs"]


def _step_fn(model, optimizer, loss_fn, setup):
    def step(x, y):
        x = setup.prepare(x)
        with setup.autocast():
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def _time(fn, steps: int, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        fn(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_one(backbone: str, *, images: torch.Tensor, labels: torch.Tensor, num_classes: int, image_size: int,
              steps: int, batch_size: int, setup, pretrained: bool = False, warmup: int = 2) -> dict:
    spec = get_spec(backbone)
    torch.manual_seed(0)
    model = create_model(backbone, num_classes, pretrained=pretrained, image_size=image_size).to(setup.device)
    if setup.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=setup.device.type == "cuda")
    step = _step_fn(model, optimizer, nn.CrossEntropyLoss(label_smoothing=0.1), setup)
    gen = torch.Generator().manual_seed(0)
    aug_gen = torch.Generator(device=setup.device).manual_seed(1)
    n = len(labels)

    def real(_):
        idx = torch.randint(0, n, (batch_size,), generator=gen).to(setup.device)
        x = normalize(augment_batch(images[idx], "light", aug_gen), spec.mean, spec.std)
        step(x, labels[idx])

    synth_x = torch.randn(batch_size, 3, image_size, image_size, device=setup.device)
    synth_y = torch.randint(0, num_classes, (batch_size,), device=setup.device)

    def synthetic(_):
        step(synth_x, synth_y)

    # Interleave warm-up and measurement so neither side gets a cold or hot cache advantage.
    _time(synthetic, warmup, setup.device)
    _time(real, warmup, setup.device)
    synth_s = _time(synthetic, steps, setup.device)
    real_s = _time(real, steps, setup.device)
    real_ips = steps * batch_size / real_s
    synth_ips = steps * batch_size / synth_s
    amp = str(setup.amp_dtype or "off").replace("torch.", "")
    return {"backbone": backbone, "device": str(setup.device), "amp": amp,
            "channels_last": setup.channels_last, "image_size": image_size, "batch_size": batch_size,
            "steps": steps, "pretrained": pretrained, "real_images_per_s": round(real_ips, 1),
            "synthetic_images_per_s": round(synth_ips, 1), "ratio": round(real_ips / synth_ips, 3)}


def bench_train(backbones: list[str], *, image_size: int = 96, steps: int = 10, batch_size: int = 32,
                dataset: str = "fashion-mnist", device: str = "auto", amp: str = "auto",
                pretrained: bool = False) -> list[dict]:
    setup = resolve_device(device, amp)
    for name in backbones:
        get_spec(name)  # fail fast on an unknown name
    data = load_dataset(dataset)
    train_t = decode_split(data, "train", image_size, data.classes)  # cached after the first call
    images = train_t.images.to(setup.device)
    labels = train_t.labels.to(setup.device)
    return [bench_one(name, images=images, labels=labels, num_classes=len(data.classes), image_size=image_size,
                      steps=steps, batch_size=batch_size, setup=setup, pretrained=pretrained)
            for name in backbones]


def bench_epochs(backbone: str, *, dataset: str = "fashion-mnist", image_size: int = 96, epochs: int = 3,
                 batch_size: int = 32, progress=print) -> dict:
    """Per-epoch images/s of the product's fine-tune and of the reference script, on the same data."""
    from engine.bench.recipe import reference_finetune
    from engine.runs import Run
    from engine.training.config import TrainConfig
    from engine.training.runner import train

    data = load_dataset(dataset)
    train_t = decode_split(data, "train", image_size, data.classes)  # both read the decoded cache
    val_t = decode_split(data, "val", image_size, data.classes)
    n = len(train_t.labels)
    config = TrainConfig(dataset=dataset, backbone=backbone, mode="full", image_size=image_size, epochs=epochs,
                         batch_size=batch_size)
    progress(f"product fine-tune: {epochs} epochs of {n} images")
    with tempfile.TemporaryDirectory(prefix="bench-epochs-") as tmp:
        run = Run(Path(tmp) / "run")
        run.path.mkdir()
        run.write_config(config.to_dict())
        train(config, run)
        product = [{"epoch": m["epoch"], "seconds": m["train_seconds"], "cpu_seconds": m["train_cpu_seconds"],
                    "images_per_s": m["images_per_s"]} for m in run.metrics()]
    progress(f"reference script: {epochs} epochs of {n} images")
    wall: list[float] = []
    cpu: list[float] = []
    reference_finetune(train_t.images, train_t.labels, val_t.images[:batch_size], val_t.labels[:batch_size],
                       len(data.classes), backbone, epochs, batch_size=batch_size, epoch_seconds=wall,
                       epoch_cpu_seconds=cpu)
    # The reference drops the last partial batch, as the product does: both train on the same count.
    steps = (n // batch_size) * batch_size
    reference = [{"epoch": i + 1, "seconds": round(w, 3), "cpu_seconds": round(c, 3),
                  "images_per_s": round(steps / w, 1)} for i, (w, c) in enumerate(zip(wall, cpu))]
    return {"dataset": dataset, "backbone": backbone, "image_size": image_size, "batch_size": batch_size,
            "images": n, "device": str(resolve_device(config.device, config.amp).device),
            "product": product, "reference": reference}


def _trend(rows: list[dict]) -> float:
    """Last epoch's images/s over the first's (1.0: no slow-down)."""
    return rows[-1]["images_per_s"] / rows[0]["images_per_s"] if rows and rows[0]["images_per_s"] else float("nan")


def format_epochs(result: dict) -> str:
    lines = [f"whole epochs on {result['dataset']} ({result['images']} training images, {result['image_size']} px, "
             f"batch {result['batch_size']}, {result['backbone']}, product on {result['device']}, reference on cpu):",
             f"{'epoch':<7}{'product img/s':>15}{'reference img/s':>17}{'product/ref':>13}"
             f"{'product CPU s':>15}{'reference CPU s':>17}"]
    for p, r in zip(result["product"], result["reference"]):
        ratio = p["images_per_s"] / r["images_per_s"]
        lines.append(f"{p['epoch']:<7}{p['images_per_s']:>15}{r['images_per_s']:>17}{ratio:>13.2f}"
                     f"{p['cpu_seconds']:>15.1f}{r['cpu_seconds']:>17.1f}")
    lines.append(f"last/first epoch images/s: product {_trend(result['product']):.2f}, "
                 f"reference {_trend(result['reference']):.2f}")
    return "\n".join(lines)


def format_report(rows: list[dict]) -> str:
    lines = []
    if rows:
        r = rows[0]
        lines.append(f"training throughput on {r['device']} (amp {r['amp']}, channels_last {r['channels_last']}), "
                     f"{r['image_size']} px, batch {r['batch_size']}, {r['steps']} timed steps; "
                     f"{'pretrained' if r['pretrained'] else 'random-init'} weights "
                     "(throughput does not depend on weight values)")
    lines.append(f"{'backbone':<20}{'real img/s':>12}{'synthetic img/s':>17}{'ratio':>8}")
    for r in rows:
        flag = "" if r["ratio"] >= 0.8 else "  (below the 0.8 target)"
        lines.append(f"{r['backbone']:<20}{r['real_images_per_s']:>12}{r['synthetic_images_per_s']:>17}"
                     f"{r['ratio']:>8.2f}{flag}")
    return "\n".join(lines)
