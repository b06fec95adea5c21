"""One training run from config to evaluated checkpoint, written into its run directory."""
from __future__ import annotations

import math
import os
import platform
import time
import traceback

import numpy as np
import torch
from torch import nn

from engine.data.dataset import load_dataset
from engine.data.tensors import decode_split
from engine.errors import UserError
from engine.models import create_model, get_spec
from engine.runs import Run
from engine.training.callbacks import Callback, CancelledByUser, RunDirCallback
from engine.training.config import TrainConfig
from engine.training.freeze import apply_freeze_policy, param_groups
from engine.training.loop import evaluate, extract_features, resolve_device, train_head_epoch, train_one_epoch
from engine.training.metrics import classification_report

__all__ = ["train", "load_checkpoint_model", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1


def _versions() -> dict:
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__}


def _warmup_cosine(optimizer, total_steps: int, warmup_steps: int):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """Inverse-frequency weights when the largest class is over 1.5x the smallest."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    if counts.min() == 0 or counts.max() / counts.min() <= 1.5:
        return None
    weights = counts.sum() / (num_classes * counts)
    return weights


def _save_checkpoint(path, model, config: TrainConfig, classes, epoch, extra=None):
    blob = {"format": CHECKPOINT_FORMAT, "state_dict": model.state_dict(), "config": config.to_dict(),
            "classes": list(classes), "epoch": epoch}
    blob.update(extra or {})
    tmp = path.with_suffix(".partial")
    torch.save(blob, tmp)
    tmp.replace(path)


def load_checkpoint_model(path) -> tuple[nn.Module, TrainConfig, list[str]]:
    """Rebuild the trained model from a checkpoint (no pretrained download needed)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    config = TrainConfig.from_dict(blob["config"])
    size = config.image_size or get_spec(config.backbone).input_size
    model = create_model(config.backbone, len(blob["classes"]), pretrained=False, image_size=size)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), config, list(blob["classes"])


def train(config: TrainConfig, run: Run, callbacks: list[Callback] | None = None) -> dict:
    """Train as ``config`` says, writing everything into ``run``; returns eval.json's content."""
    callback = RunDirCallback(run, config.epochs)
    extra = list(callbacks or [])

    class _Fanout(Callback):
        def on_stage(self, *a, **k):
            for c in [callback, *extra]:
                c.on_stage(*a, **k)

        def on_train_start(self):
            for c in [callback, *extra]:
                c.on_train_start()

        def on_progress(self, *a, **k):
            for c in [callback, *extra]:
                c.on_progress(*a, **k)

        def on_epoch_end(self, record):
            for c in [callback, *extra]:
                c.on_epoch_end(record)

        def should_stop(self):
            return any(c.should_stop() for c in [callback, *extra])

    cb = _Fanout()
    started = time.time()
    run.update_status(state="running", stage="starting", started_at=started, pid=os.getpid(),
                      epoch=0, epochs=config.epochs, progress=0.0, error=None)
    try:
        result = _train(config, run, cb)
    except CancelledByUser:
        run.update_status(state="cancelled", stage="cancelled", message="cancelled by user",
                          finished_at=time.time())
        raise
    except UserError as exc:
        run.update_status(state="failed", error=str(exc), finished_at=time.time())
        raise
    except torch.OutOfMemoryError:
        run.update_status(state="failed", finished_at=time.time(),
                          error="out of memory: lower the batch size or the image size and start again")
        raise
    except Exception as exc:
        run.update_status(state="failed", finished_at=time.time(),
                          error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))
        raise
    run.update_status(state="done", stage="done", progress=1.0, eta_s=0, finished_at=time.time(),
                      duration_s=round(time.time() - started, 1))
    return result


def _train(config: TrainConfig, run: Run, cb: Callback) -> dict:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    setup = resolve_device(config.device, config.amp, config.channels_last)
    spec = get_spec(config.backbone)
    size = config.image_size or spec.input_size

    cb.on_stage("data", "reading and decoding images")
    dataset = load_dataset(config.dataset, val_fraction=config.val_fraction, seed=config.seed)
    classes = dataset.classes
    train_t = decode_split(dataset, "train", size, classes, progress=lambda d, t: cb.on_progress(d, t, "decode train"))
    val_t = decode_split(dataset, "val", size, classes, progress=lambda d, t: cb.on_progress(d, t, "decode val"))
    cfg_record = config.to_dict() | {
        "resolved": {"image_size": size, "device": str(setup.device),
                     "amp": str(setup.amp_dtype).replace("torch.", "") if setup.amp_dtype else "off",
                     "channels_last": setup.channels_last, "classes": classes,
                     "num_train": len(train_t), "num_val": len(val_t),
                     "dataset_name": dataset.name, "dataset_fingerprint": dataset.fingerprint(),
                     "mean": list(spec.mean), "std": list(spec.std), "versions": _versions()}
    }
    run.write_config(cfg_record)

    cb.on_stage("model", f"loading {config.backbone}")
    model = create_model(config.backbone, len(classes), pretrained=config.mode != "scratch", image_size=size)
    apply_freeze_policy(model, config.mode, config.unfreeze_stages)
    model.to(setup.device)
    if setup.channels_last:
        model.to(memory_format=torch.channels_last)
    images_train = train_t.images.to(setup.device)
    images_val = val_t.images.to(setup.device)
    y_train = train_t.labels.to(setup.device)
    y_val = val_t.labels.to(setup.device)

    weights = _class_weights(train_t.labels, len(classes))
    loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(setup.device),
                                  label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(config.seed)
    aug_generator = torch.Generator(device=setup.device).manual_seed(config.seed + 1)
    groups = param_groups(model, config.lr, config.backbone_lr_mult, config.weight_decay, config.mode)
    fused = setup.device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=config.lr, fused=fused)
    linear = config.mode == "linear"
    if linear:
        cb.on_stage("features", "computing backbone features once (the backbone is frozen)")
        feats_train = extract_features(model, images_train, setup=setup, batch_size=config.batch_size,
                                       mean=spec.mean, std=spec.std, callback=cb, stage="features train")
        feats_val = extract_features(model, images_val, setup=setup, batch_size=config.batch_size,
                                     mean=spec.mean, std=spec.std, callback=cb, stage="features val")
        steps_per_epoch = math.ceil(len(y_train) / config.batch_size)
    else:
        steps_per_epoch = max(1, len(y_train) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = _warmup_cosine(optimizer, total_steps, int(config.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda") if setup.needs_scaler() else None

    cb.on_stage("train", f"{config.mode} training for {config.epochs} epochs")
    cb.on_train_start()
    best_loss = float("inf")
    for epoch in range(1, config.epochs + 1):
        t0 = time.time()
        if linear:
            stats = train_head_epoch(model, feats_train, y_train, optimizer=optimizer, scheduler=scheduler,
                                     loss_fn=loss_fn, batch_size=config.batch_size, generator=generator, callback=cb)
            model.eval()
            with torch.no_grad():
                logits = model.head(feats_val)
            val = {"val_loss": nn.functional.cross_entropy(logits, y_val).item(),
                   "val_acc": (logits.argmax(1) == y_val).float().mean().item()}
        else:
            stats = train_one_epoch(model, images_train, y_train, optimizer=optimizer, scheduler=scheduler,
                                    loss_fn=loss_fn, setup=setup, batch_size=config.batch_size,
                                    augment=config.augment, mean=spec.mean, std=spec.std, generator=generator,
                                    aug_generator=aug_generator, scaler=scaler, callback=cb)
            val = evaluate(model, images_val, y_val, setup=setup, batch_size=config.batch_size,
                           mean=spec.mean, std=spec.std)
        seconds = time.time() - t0
        record = {"epoch": epoch, **stats, "val_loss": val["val_loss"], "val_acc": val["val_acc"],
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
                  "images_per_s": round(len(y_train) / seconds, 1) if seconds > 0 else None}
        if val["val_loss"] < best_loss:
            best_loss = val["val_loss"]
            record["best"] = True
            _save_checkpoint(run.best_checkpoint, model, config, classes, epoch)
        cb.on_epoch_end(record)
        if cb.should_stop():
            raise CancelledByUser()

    cb.on_stage("evaluate", "evaluating the best checkpoint on the validation split")
    blob = torch.load(run.best_checkpoint, map_location=setup.device, weights_only=True)
    model.load_state_dict(blob["state_dict"])
    final = evaluate(model, images_val, y_val, setup=setup, batch_size=config.batch_size, mean=spec.mean, std=spec.std)
    report = classification_report(y_val.cpu().numpy(), final["preds"].numpy(), final["logits"].numpy(), classes)
    report.update({"best_epoch": blob["epoch"], "val_loss": final["val_loss"], "paths": val_t.paths})
    from engine.workspace import write_json_atomic

    write_json_atomic(run.eval_file, report)
    return report
