"""``python -m engine bench train``: training throughput on the real data path vs synthetic data.

Both measurements run in the same process on the same model and optimiser
(full fine-tune, AdamW, the device's autocast/channels_last setup):

* real: the decoded uint8 tensor cache of a built-in dataset, batches sliced,
  augmented ("light" preset) and normalised on the device — what training does;
* synthetic: one normalised float batch already in device memory (the ceiling).

real/synthetic is the share of the model's speed the data path keeps (target >= 0.8).
Weights are random by default: throughput does not depend on weight values, and
most backbones' pretrained weights are not available offline.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from engine.data.dataset import load_dataset
from engine.data.tensors import decode_split
from engine.models import create_model, get_spec
from engine.training.augment import augment_batch, normalize
from engine.device import resolve_device

__all__ = ["bench_train", "format_report"]


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
