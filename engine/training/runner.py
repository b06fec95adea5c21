"""One training run from config to evaluated checkpoint, written into its run directory."""
from __future__ import annotations

import json
import math
import os
import platform
import time
import traceback
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.data.dataset import load_dataset
from engine.data.tensors import decode_split
from engine.errors import UserError
from engine.models import create_model, get_spec
from engine.runs import Run
from engine.training.callbacks import Callback, CancelledByUser, RunDirCallback
from engine.training.config import DEFAULT_LR, TrainConfig
from engine.training.augment import mix_batch
from engine.training.distributed import DistContext, init_distributed
from engine.training.freeze import apply_freeze_policy, param_groups, trainable_stages
from engine.training.loop import (evaluate, extract_features, resolve_device, train_head_epoch, train_one_epoch,
                                  unwrap)
from engine.training.metrics import classification_report

__all__ = ["train", "resume", "load_checkpoint_model", "prepare", "Prepared", "CHECKPOINT_FORMAT"]

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



class _Fanout(Callback):
    def __init__(self, callbacks):
        self.callbacks = callbacks

    def on_stage(self, *a, **k):
        for c in self.callbacks:
            c.on_stage(*a, **k)

    def on_train_start(self):
        for c in self.callbacks:
            c.on_train_start()

    def on_progress(self, *a, **k):
        for c in self.callbacks:
            c.on_progress(*a, **k)

    def on_epoch_end(self, record):
        for c in self.callbacks:
            c.on_epoch_end(record)

    def should_stop(self):
        return any(c.should_stop() for c in self.callbacks)


def _set_threads(config: TrainConfig) -> None:
    """Threads: the config's, else the OMP_NUM_THREADS the job queue gave this worker."""
    threads = config.threads or int(os.environ.get("OMP_NUM_THREADS") or 0)
    if threads:
        torch.set_num_threads(threads)


def train(config: TrainConfig, run: Run, callbacks: list[Callback] | None = None, resume: bool = False,
          finish: bool = True) -> dict:
    """Train as ``config`` says, writing everything into ``run``; returns eval.json's content.

    ``resume=True`` continues from ``run``'s last.pt (model, optimiser, scheduler, RNG
    state, epoch). Under torchrun every rank trains; only rank 0 writes the run dir.
    ``finish=False`` leaves the state ``running`` for a caller with more to do
    (the job exports next), so ``done`` is written exactly once.
    """
    dist_ctx = init_distributed(config.device)
    if not dist_ctx.is_main:
        try:
            return _train(config, run, Callback(), dist_ctx, resume)
        finally:
            dist_ctx.close()
    callback = RunDirCallback(run, config.epochs)
    cb = _Fanout([callback, *(callbacks or [])])
    started = time.time()
    if resume:
        previous = run.status()
        started = time.time() - float(previous.get("duration_s") or 0)
    run.update_status(state="running", stage="starting", started_at=started, pid=os.getpid(),
                      epoch=0, epochs=config.epochs, progress=0.0, error=None, message="",
                      world_size=dist_ctx.world)
    if resume:
        run.cancel_file.unlink(missing_ok=True)  # an old cancel must not stop the resumed run
    try:
        result = _train(config, run, cb, dist_ctx, resume)
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
    finally:
        dist_ctx.close()
    status = run.status()
    run.update_status(state="done" if finish else "running", stage="done" if finish else "trained",
                      progress=1.0, eta_s=0, finished_at=time.time(), duration_s=round(time.time() - started, 1),
                      message=status.get("message") if status.get("stopped_early") else "")
    return result


def resume(run: Run, callbacks: list[Callback] | None = None, finish: bool = True) -> dict:
    """Continue an interrupted/cancelled/failed run from its last epoch checkpoint."""
    if not run.exists():
        raise UserError(f"'{run.path}' is not a run directory (no config.json)")
    if not run.last_checkpoint.is_file():
        raise UserError(f"run '{run.id}' has no last.pt checkpoint to resume from; start it again instead")
    if run.status().get("state") == "done":
        raise UserError(f"run '{run.id}' already finished; nothing to resume")
    config = TrainConfig.from_dict(run.config())
    return train(config, run, callbacks=callbacks, resume=True, finish=finish)


@dataclass
class Prepared:
    """Everything a training (or LR-finder) loop needs, on the device."""
    config: TrainConfig
    setup: object
    spec: object
    size: int
    classes: list
    model: nn.Module
    images_train: torch.Tensor
    images_val: torch.Tensor
    y_train: torch.Tensor
    y_val: torch.Tensor
    val_paths: list
    loss_fn: nn.Module
    cfg_record: dict


def prepare(config: TrainConfig, cb: Callback | None = None, dist_ctx: DistContext | None = None) -> Prepared:
    """Seed, pick the device, decode the data once (cached), build and freeze the model."""
    cb = cb or Callback()
    dist_ctx = dist_ctx or DistContext()
    _set_threads(config)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    setup = resolve_device(config.device, config.amp, config.channels_last)
    if dist_ctx.enabled and setup.device.type == "cuda":
        setup.device = torch.device("cuda", dist_ctx.local_rank)
    spec = get_spec(config.backbone)
    size = config.image_size or spec.input_size

    cb.on_stage("data", "reading and decoding images")
    dataset = load_dataset(config.dataset, val_fraction=config.val_fraction, seed=config.seed)
    classes = dataset.classes
    if not dist_ctx.is_main:
        dist_ctx.barrier()  # rank 0 decodes and writes the cache first; the others read it
    train_t = decode_split(dataset, "train", size, classes, progress=lambda d, t: cb.on_progress(d, t, "decode train"))
    val_t = decode_split(dataset, "val", size, classes, progress=lambda d, t: cb.on_progress(d, t, "decode val"))
    if dist_ctx.is_main:
        dist_ctx.barrier()
    if len(train_t) == 0 or len(val_t) == 0:
        raise UserError("no usable images in the training or validation split; check the dataset on the Dataset page")
    cfg_record = config.to_dict() | {
        "resolved": {"image_size": size, "device": str(setup.device),
                     "amp": str(setup.amp_dtype).replace("torch.", "") if setup.amp_dtype else "off",
                     "channels_last": setup.channels_last, "classes": classes,
                     "num_train": len(train_t), "num_val": len(val_t), "world_size": dist_ctx.world,
                     "threads": torch.get_num_threads(),
                     "dataset_name": dataset.name, "dataset_fingerprint": dataset.fingerprint(),
                     "mean": list(spec.mean), "std": list(spec.std), "versions": _versions()}
    }
    cb.on_stage("model", f"loading {config.backbone}")
    model = create_model(config.backbone, len(classes), pretrained=config.mode != "scratch", image_size=size)
    apply_freeze_policy(model, config.mode, config.unfreeze_stages, epoch=0, every=config.gradual_every)
    model.to(setup.device)
    if setup.channels_last:
        model.to(memory_format=torch.channels_last)
    weights = _class_weights(train_t.labels, len(classes))
    loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(setup.device),
                                  label_smoothing=config.label_smoothing)
    return Prepared(config, setup, spec, size, classes, model, train_t.images.to(setup.device),
                    val_t.images.to(setup.device), train_t.labels.to(setup.device), val_t.labels.to(setup.device),
                    val_t.paths, loss_fn, cfg_record)


def _wrap(model: nn.Module, config: TrainConfig, setup, dist_ctx: DistContext) -> nn.Module:
    """The module the loop calls: DDP across ranks, then torch.compile if asked."""
    net = model
    if dist_ctx.enabled:
        ids = [setup.device.index] if setup.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        net = torch.compile(net)
    return net


def _rng_state(generator, aug_generator) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
             "aug_generator": aug_generator.get_state(),
             "numpy": torch.from_numpy(np.frombuffer(np.random.get_state()[1].tobytes(), dtype=np.uint8).copy())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator, aug_generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    aug_generator.set_state(state["aug_generator"])
    keys = np.frombuffer(state["numpy"].numpy().tobytes(), dtype=np.uint32)
    np.random.set_state(("MT19937", keys, 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_metrics(run: Run, last_epoch: int) -> None:
    """Drop epoch lines written after the checkpoint we resume from."""
    kept = [m for m in run.metrics() if m.get("epoch", 0) <= last_epoch]
    tmp = run.metrics_file.with_suffix(".partial")
    tmp.write_text("".join(json.dumps(m) + "\n" for m in kept))
    tmp.replace(run.metrics_file)


def _warm_start_head(p: Prepared, cb: Callback) -> None:
    """LP-FT: fit the new head on frozen, un-augmented features before fine-tuning."""
    config, model = p.config, p.model
    cb.on_stage("head warm-up", f"fitting the new head on frozen features for {config.head_warmup_epochs} epochs")
    feats = extract_features(model, p.images_train, setup=p.setup, batch_size=config.batch_size, mean=p.spec.mean,
                             std=p.spec.std, callback=cb, stage="head warm-up")
    optimizer = torch.optim.AdamW([{"params": [model.head.weight], "weight_decay": config.weight_decay},
                                   {"params": [model.head.bias], "weight_decay": 0.0}], lr=DEFAULT_LR["linear"])
    steps = math.ceil(len(p.y_train) / config.batch_size)
    scheduler = _warmup_cosine(optimizer, steps * config.head_warmup_epochs, steps)
    generator = torch.Generator().manual_seed(config.seed + 2)
    for _ in range(config.head_warmup_epochs):
        train_head_epoch(model, feats, p.y_train, optimizer=optimizer, scheduler=scheduler, loss_fn=p.loss_fn,
                         batch_size=config.batch_size, generator=generator, callback=cb)


def _train(config: TrainConfig, run: Run, cb: Callback, dist_ctx: DistContext, resume: bool = False) -> dict:
    p = prepare(config, cb, dist_ctx)
    setup, spec, model, classes = p.setup, p.spec, p.model, p.classes
    if dist_ctx.is_main and not resume:
        run.write_config(p.cfg_record)

    generator = torch.Generator().manual_seed(config.seed)
    aug_generator = torch.Generator(device=setup.device).manual_seed(config.seed + 1 + dist_ctx.rank)
    groups = param_groups(model, config.lr, config.backbone_lr_mult, config.weight_decay, config.mode,
                          layer_decay=config.layer_decay)
    fused = setup.device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=config.lr, fused=fused)
    linear = config.mode == "linear"
    if linear:
        cb.on_stage("features", "computing backbone features once (the backbone is frozen)")
        feats_train = extract_features(model, p.images_train, setup=setup, batch_size=config.batch_size,
                                       mean=spec.mean, std=spec.std, callback=cb, stage="features train")
        feats_val = extract_features(model, p.images_val, setup=setup, batch_size=config.batch_size,
                                     mean=spec.mean, std=spec.std, callback=cb, stage="features val")
        steps_per_epoch = math.ceil(len(p.y_train) / config.batch_size)
    else:
        steps_per_epoch = max(1, len(p.y_train) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = _warmup_cosine(optimizer, total_steps, int(config.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda") if setup.needs_scaler() else None
    mix = None
    if config.mix != "none" and not linear:
        def mix(x, y):
            return mix_batch(x, y, config.mix, len(classes), config.mix_alpha)

    best_loss, bad_epochs, start_epoch = float("inf"), 0, 1
    if resume:
        blob = torch.load(run.last_checkpoint, map_location=setup.device, weights_only=True)
        start_epoch = int(blob["epoch"]) + 1
        apply_freeze_policy(model, config.mode, config.unfreeze_stages, epoch=start_epoch - 1,
                            every=config.gradual_every)
        model.load_state_dict(blob["state_dict"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        if scaler is not None and blob.get("scaler"):
            scaler.load_state_dict(blob["scaler"])
        best_loss, bad_epochs = float(blob["best_loss"]), int(blob["bad_epochs"])
        _set_rng_state(blob["rng"], generator, aug_generator)
        if dist_ctx.is_main:
            _truncate_metrics(run, start_epoch - 1)
            run.update_status(message=f"resumed after epoch {start_epoch - 1}")
            for c in getattr(cb, "callbacks", []):
                if isinstance(c, RunDirCallback):
                    c._epoch = start_epoch - 1

    if not resume and config.mode in ("partial", "gradual", "full") and config.head_warmup_epochs:
        _warm_start_head(p, cb)
    open_stages = trainable_stages(model, config.mode, config.unfreeze_stages, start_epoch - 1, config.gradual_every)
    net = _wrap(model, config, setup, dist_ctx)
    cb.on_stage("train", f"{config.mode} training for {config.epochs} epochs")
    cb.on_train_start()
    for epoch in range(start_epoch, config.epochs + 1):
        t0 = time.time()
        if config.mode == "gradual":
            now_open = trainable_stages(model, config.mode, epoch=epoch - 1, every=config.gradual_every)
            if now_open != open_stages:
                apply_freeze_policy(model, config.mode, epoch=epoch - 1, every=config.gradual_every)
                net = _wrap(model, config, setup, dist_ctx)  # DDP must see the new trainable set
                open_stages = now_open
        if linear:
            stats = train_head_epoch(model, feats_train, p.y_train, optimizer=optimizer, scheduler=scheduler,
                                     loss_fn=p.loss_fn, batch_size=config.batch_size, generator=generator,
                                     callback=cb)
            model.eval()
            with torch.no_grad():
                logits = model.head(feats_val)
            val = {"val_loss": nn.functional.cross_entropy(logits, p.y_val).item(),
                   "val_acc": (logits.argmax(1) == p.y_val).float().mean().item()}
        else:
            stats = train_one_epoch(net, p.images_train, p.y_train, optimizer=optimizer, scheduler=scheduler,
                                    loss_fn=p.loss_fn, setup=setup, batch_size=config.batch_size,
                                    augment=config.augment, mean=spec.mean, std=spec.std, generator=generator,
                                    aug_generator=aug_generator, scaler=scaler, callback=cb, mix=mix,
                                    dist_ctx=dist_ctx if dist_ctx.enabled else None)
            val = evaluate(model, p.images_val, p.y_val, setup=setup, batch_size=config.batch_size,
                           mean=spec.mean, std=spec.std)
        seconds = time.time() - t0
        record = {"epoch": epoch, **stats, "val_loss": val["val_loss"], "val_acc": val["val_acc"],
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
                  "images_per_s": round(len(p.y_train) / seconds, 1) if seconds > 0 else None}
        if config.mode == "gradual":
            record["open_stages"] = open_stages
        if val["val_loss"] < best_loss:
            best_loss, bad_epochs = val["val_loss"], 0
            record["best"] = True
            if dist_ctx.is_main:
                _save_checkpoint(run.best_checkpoint, model, config, classes, epoch)
        else:
            bad_epochs += 1
        if dist_ctx.is_main:
            # last.pt before the metrics line: a kill between the two loses one line, not the epoch.
            _save_checkpoint(run.last_checkpoint, model, config, classes, epoch, extra={
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {}, "best_loss": best_loss,
                "bad_epochs": bad_epochs, "rng": _rng_state(generator, aug_generator)})
        cb.on_epoch_end(record)
        if config.patience is not None and bad_epochs >= config.patience and epoch < config.epochs:
            if dist_ctx.is_main:
                run.update_status(stopped_early=epoch, message=f"stopped early after epoch {epoch}: validation "
                                  f"loss did not improve for {config.patience} epochs")
            break
        if dist_ctx.any(cb.should_stop()):
            raise CancelledByUser()

    dist_ctx.barrier()
    cb.on_stage("evaluate", "evaluating the best checkpoint on the validation split")
    blob = torch.load(run.best_checkpoint, map_location=setup.device, weights_only=True)
    model.load_state_dict(blob["state_dict"])
    final = evaluate(model, p.images_val, p.y_val, setup=setup, batch_size=config.batch_size, mean=spec.mean,
                     std=spec.std)
    report = classification_report(p.y_val.cpu().numpy(), final["preds"].numpy(), final["logits"].numpy(), classes)
    report.update({"best_epoch": blob["epoch"], "val_loss": final["val_loss"], "paths": p.val_paths})
    if dist_ctx.is_main:
        from engine.workspace import write_json_atomic

        write_json_atomic(run.eval_file, report)
    return report
