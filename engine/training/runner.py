"""One training run from config to evaluated checkpoint, written into its run directory."""
from __future__ import annotations

import json
import math
import os
import time
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.data.corrections import version_label
from engine.data.dataset import Dataset, load_dataset
from engine.data.health import inverse_frequency_weights
from engine.data.tensors import decode_split
from engine.features import feature_extractor, split_features
from engine.errors import UserError
from engine.models import TransferModel, create_model, get_spec
from engine.models.registry import BackboneSpec
from engine.runs import Resolved, Run
from engine.training.callbacks import Callback, CancelledByUser, Fanout, RunDirCallback
from engine.training.checkpoint import read_checkpoint, save_checkpoint, software_versions
from engine.training.config import TrainConfig
from engine.training.augment import mix_batch
from engine.training.distributed import DistContext, init_distributed
from engine.training.freeze import adapt_batch_norm, apply_freeze_policy, param_groups, trainable_stages
from engine.device import DeviceSetup, resolve_device
from engine.training.loop import LoopState, backbone_features, clean_batches, evaluate, train_one_epoch
from engine.training.metrics import classification_report
from engine.training.probe import fit_probe
from engine.training.state import EarlyStopping, TrainingState, warmup_cosine

__all__ = ["train", "resume", "prepare", "Prepared", "fit_head", "probe_features", "validation_every"]

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
    callback = RunDirCallback(run, config.num_epochs)
    cb = Fanout([callback, *(callbacks or [])])
    started = time.time()
    if resume:
        previous = run.status()
        started = time.time() - float(previous.get("duration_s") or 0)
    run.update_status(state="running", stage="starting", started_at=started, pid=os.getpid(),
                      epoch=0, epochs=config.num_epochs, progress=0.0, error=None, message="",
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
    setup: DeviceSetup
    spec: BackboneSpec
    size: int
    classes: list[str]
    model: TransferModel
    dataset: Dataset
    # Decoded uint8 images on the device; None for the linear probe, which reads cached features.
    images_train: torch.Tensor | None
    images_val: torch.Tensor | None
    images_test: torch.Tensor | None  # the held-out test split, when the data has one
    y_train: torch.Tensor
    y_val: torch.Tensor
    y_test: torch.Tensor | None
    val_paths: list[str]
    test_paths: list[str]
    loss_fn: nn.Module
    sample_weights: torch.Tensor | None  # balance="sampler": per-image draw weights
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

    cb.on_stage("data", "reading the dataset")
    dataset = load_dataset(config.dataset, val_fraction=config.val_fraction, seed=config.seed)
    classes = dataset.classes
    splits = ["train", "val"] + (["test"] if dataset.has_test else [])
    cb.on_stage("model", f"loading {config.backbone}")
    model = create_model(config.backbone, len(classes), pretrained=config.mode != "scratch", image_size=size)
    images: dict[str, torch.Tensor | None] = dict.fromkeys(splits)
    labels: dict[str, torch.Tensor] = {}
    paths: dict[str, list] = {}
    if config.mode == "linear":
        cb.on_stage("features", "computing backbone features once (cached for later runs)")
        for split in splits:
            feats = probe_features(dataset, split, config.backbone, size, classes, setup, model, cb)
            labels[split], paths[split] = torch.from_numpy(feats.labels), feats.paths
    else:
        cb.on_stage("data", "decoding images (cached for later runs)")
        if not dist_ctx.is_main:
            dist_ctx.barrier()  # rank 0 decodes and writes the cache first; the others read it
        for split in splits:
            t = decode_split(dataset, split, size, classes, progress=_stage_progress(cb, f"decode {split}"))
            images[split], labels[split], paths[split] = t.images.to(setup.device), t.labels, t.paths
        if dist_ctx.is_main:
            dist_ctx.barrier()
    if len(labels["train"]) == 0 or len(labels["val"]) == 0:
        raise UserError("no usable images in the training or validation split; check the dataset on the Dataset page")
    resolved = Resolved(image_size=size, device=str(setup.device),
                        amp=str(setup.amp_dtype).replace("torch.", "") if setup.amp_dtype else "off",
                        channels_last=setup.channels_last, classes=classes,
                        num_train=len(labels["train"]), num_val=len(labels["val"]),
                        num_test=len(labels["test"]) if "test" in labels else 0, world_size=dist_ctx.world,
                        threads=torch.get_num_threads(), dataset_name=dataset.name,
                        dataset_fingerprint=dataset.fingerprint(), dataset_version=version_label(dataset.root),
                        mean=list(spec.mean), std=list(spec.std), versions=software_versions())
    cfg_record = config.to_dict() | {"resolved": resolved.to_dict()}
    apply_freeze_policy(model, config.mode, config.unfreeze_stages, epoch=0, every=config.gradual_every)
    model.to(setup.device)
    if setup.channels_last:
        model.to(memory_format=torch.channels_last)
    # Unweighted by default: weights trade accuracy for minority recall, the user's call (--balance).
    inverse = torch.tensor(inverse_frequency_weights(torch.bincount(labels["train"], minlength=len(classes))
                                                     .numpy()), dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss(weight=inverse.to(setup.device) if config.balance == "weights" else None,
                                  label_smoothing=config.label_smoothing)
    sample_weights = inverse[labels["train"]] if config.balance == "sampler" else None
    test = "test" in labels
    return Prepared(config, setup, spec, size, classes, model, dataset, images["train"], images["val"],
                    images.get("test"), labels["train"].to(setup.device), labels["val"].to(setup.device),
                    labels["test"].to(setup.device) if test else None, paths["val"], paths.get("test", []),
                    loss_fn, sample_weights, cfg_record)


def probe_features(dataset, split: str, backbone: str, size: int, classes: list, setup, model: nn.Module,
                   cb: Callback):
    """The frozen, pretrained ``model``'s features of ``split`` (cached on disk), with progress."""
    return split_features(dataset, split, backbone, size, classes,
                          extractor=lambda n: feature_extractor(backbone, size, setup=setup, model=model, images=n),
                          progress=lambda d, t, stage: cb.on_progress(d, t, stage))


def _stage_progress(cb: Callback, stage: str) -> Callable[[int, int], None]:
    """``progress(done, total)`` reported to ``cb`` as ``stage``."""
    return lambda done, total: cb.on_progress(done, total, stage)


def _wrap(model: nn.Module, config: TrainConfig, setup, dist_ctx: DistContext) -> nn.Module:
    """The module the loop calls: DDP across ranks, then torch.compile if asked."""
    net = model
    if dist_ctx.enabled:
        ids = [setup.device.index] if setup.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        net = typing.cast(nn.Module, torch.compile(net))  # compiling a module gives a module (OptimizedModule)
    return net


def _truncate_metrics(run: Run, last_epoch: int) -> None:
    """Drop epoch lines written after the checkpoint we resume from."""
    kept = [m for m in run.metrics() if m.get("epoch", 0) <= last_epoch]
    tmp = run.metrics_file.with_suffix(".partial")
    tmp.write_text("".join(json.dumps(m) + "\n" for m in kept))
    tmp.replace(run.metrics_file)


def validation_every(config: TrainConfig, num_train: int, num_val: int) -> int:
    """Epochs between validation passes: ``config.val_every``, else as many as keep validation's
    cost (a forward pass, about a third of a training step per image) under a tenth of training's.

    Measured on Fashion-MNIST (1,000 train / 500 val, 128 px, 5 epochs): validating every epoch
    made the fine-tune 10 % slower than the plain reference script, which validates once."""
    if config.val_every:
        return int(config.val_every)
    return max(1, math.ceil(10 * num_val / (3 * max(num_train, 1))))


def fit_head(p: Prepared, cb: Callback, adapted: bool = False) -> dict:
    """Fit the head as the converged linear probe on frozen, un-augmented features.

    The linear mode's whole training, and the fine-tune modes' head warm-up (LP-FT,
    Kumar et al. 2022): a random head's large gradients would otherwise wreck the
    pretrained features in the first steps.
    """
    config = p.config
    cb.on_stage("probe", "fitting the linear head on frozen features (regularisation by cross-validation)")
    if adapted and p.images_train is not None:  # the backbone's norms moved: the cached features are stale
        features = backbone_features(p.model, p.images_train, setup=p.setup, batch_size=config.batch_size,
                                     mean=p.spec.mean, std=p.spec.std).numpy()
        labels = p.y_train.cpu().numpy()
    else:
        feats = probe_features(p.dataset, "train", config.backbone, p.size, p.classes, p.setup, p.model, cb)
        features, labels = feats.features, feats.labels
    fit = fit_probe(features, labels, len(p.classes), balance=config.balance, seed=config.seed)
    fit.load_into(p.model.head)
    logits = torch.from_numpy(fit.logits(features))
    y = torch.from_numpy(labels)
    return {"train_loss": nn.functional.cross_entropy(logits, y).item(),
            "train_acc": (logits.argmax(1) == y).float().mean().item(), "probe": fit.summary()}


def _probe_eval(p: Prepared, split: str, cb: Callback) -> dict:
    """``evaluate``'s result for the probe, from cached features (no image is decoded)."""
    feats = probe_features(p.dataset, split, p.config.backbone, p.size, p.classes, p.setup, p.model, cb)
    with torch.no_grad():
        logits = p.model.head(torch.from_numpy(feats.features).to(p.model.head.weight)).float().cpu()
    y = torch.from_numpy(feats.labels)
    preds = logits.argmax(1)
    return {"val_loss": nn.functional.cross_entropy(logits, y).item(), "val_acc": (preds == y).float().mean().item(),
            "logits": logits, "preds": preds}


def _train_probe(p: Prepared, run: Run, cb: Callback, dist_ctx: DistContext) -> dict:
    """Linear mode: one converged fit of the head, recorded as the run's single epoch."""
    t0 = time.time()
    cb.on_train_start()
    stats = fit_head(p, cb)
    val = _probe_eval(p, "val", cb)
    seconds = time.time() - t0
    record = {"epoch": 1, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
              "val_loss": val["val_loss"], "val_acc": val["val_acc"], "lr": None, "seconds": round(seconds, 3),
              "images_per_s": round(len(p.y_train) / seconds, 1) if seconds > 0 else None, "best": True,
              "probe": stats["probe"]}
    if dist_ctx.is_main:
        save_checkpoint(run.best_checkpoint, p.model, p.config, p.classes, 1)
        save_checkpoint(run.last_checkpoint, p.model, p.config, p.classes, 1)
    cb.on_epoch_end(record)
    return _final_report(p, run, cb, dist_ctx, best_epoch=1, evaluate_split=lambda split: _probe_eval(p, split, cb))


def _final_report(p: Prepared, run: Run, cb: Callback, dist_ctx: DistContext, best_epoch: int,
                  evaluate_split) -> dict:
    """eval.json: the best model on the test split when there is one (never used to choose
    anything), else on validation; validation figures alongside."""
    cb.on_stage("evaluate", "evaluating the best checkpoint")
    train_counts = torch.bincount(p.y_train.cpu(), minlength=len(p.classes)).numpy()
    reports = {}
    for split, y, paths in (("val", p.y_val, p.val_paths), ("test", p.y_test, p.test_paths)):
        if y is None:
            continue
        result = evaluate_split(split)
        report = classification_report(y.cpu().numpy(), result["preds"].numpy(), result["logits"].numpy(),
                                       p.classes, train_counts=train_counts)
        report.update({"split": split, "val_loss": result["val_loss"], "paths": paths})
        reports[split] = report
        if split == "val" and "features" in result and dist_ctx.is_main:
            _save_val_outputs(run, result)
    report = reports.get("test", reports["val"])
    report["best_epoch"] = best_epoch
    if "test" in reports:
        val = reports["val"]
        report["validation"] = {k: val[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "num_images")}
    if dist_ctx.is_main:
        from engine.workspace import write_json_atomic

        write_json_atomic(run.eval_file, report)
    return report


def _save_val_outputs(run: Run, result: dict) -> None:
    """The best checkpoint's validation logits and pooled features, keyed by best.pt's digest: the
    evaluation reads them instead of passing every validation image through the model again."""
    from engine.workspace import atomic_path, file_sha256

    with atomic_path(run.val_outputs_file) as tmp, open(tmp, "wb") as f:
        np.savez(f, logits=result["logits"].numpy(), features=result["features"].numpy(),
                 checkpoint_sha256=np.array(file_sha256(run.best_checkpoint)))


def _train(config: TrainConfig, run: Run, cb: Callback, dist_ctx: DistContext, resume: bool = False) -> dict:
    p = prepare(config, cb, dist_ctx)
    setup, spec, model, classes = p.setup, p.spec, p.model, p.classes
    if dist_ctx.is_main and not resume:
        run.write_config(p.cfg_record)
    if config.mode == "linear":
        return _train_probe(p, run, cb, dist_ctx)
    if p.images_train is None or p.images_val is None:  # prepare() decodes them for every mode but linear
        raise RuntimeError(f"{config.mode} training needs the decoded images")

    generator = torch.Generator().manual_seed(config.seed)
    aug_generator = torch.Generator(device=setup.device).manual_seed(config.seed + 1 + dist_ctx.rank)
    groups = param_groups(model, config.base_lr, config.backbone_lr_mult, config.weight_decay, config.mode,
                          layer_decay=config.layer_decay)
    fused = setup.device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=config.base_lr, fused=fused)
    steps_per_epoch = max(1, len(p.y_train) // config.batch_size)
    total_steps = steps_per_epoch * config.num_epochs
    scheduler = warmup_cosine(optimizer, total_steps, int(config.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda") if setup.needs_scaler() else None
    mix = None
    if config.mix != "none":
        def mix(x, y):
            return mix_batch(x, y, config.mix, len(classes), config.mix_alpha)

    state = TrainingState(optimizer, scheduler, scaler, generator, aug_generator, EarlyStopping(config.patience))
    loop = LoopState(optimizer, scheduler, p.loss_fn, setup, spec.mean, spec.std, generator, aug_generator, scaler,
                     callback=cb, mix=mix, dist_ctx=dist_ctx if dist_ctx.enabled else None,
                     sample_weights=p.sample_weights)
    if resume:
        blob = read_checkpoint(run.last_checkpoint, setup.device)
        apply_freeze_policy(model, config.mode, config.unfreeze_stages, epoch=int(blob["epoch"]),
                            every=config.gradual_every)
        model.load_state_dict(blob["state_dict"])
        state.load_state_dict(blob["training_state"])
        if dist_ctx.is_main:
            _truncate_metrics(run, state.epoch)
            run.update_status(message=f"resumed after epoch {state.epoch}")
        cb.on_resume(state.epoch)
    start_epoch = state.epoch + 1

    adapted = not resume and config.mode in ("partial", "gradual", "full") and config.adapt_norm
    if adapted:
        cb.on_stage("norm", "re-estimating batch-norm statistics on the training images")
        adapt_batch_norm(model, clean_batches(p.images_train, setup=setup, batch_size=config.batch_size,
                                              mean=spec.mean, std=spec.std))
    if not resume and config.mode in ("partial", "gradual", "full") and config.head_warmup:
        fit_head(p, cb, adapted=adapted)
    open_stages = trainable_stages(model, config.mode, config.unfreeze_stages, start_epoch - 1, config.gradual_every)
    net = _wrap(model, config, setup, dist_ctx)
    every = validation_every(config, len(p.y_train), len(p.y_val))
    best_val: tuple[int, dict] | None = None  # the best epoch's validation result, reused by the final report
    validated = start_epoch - 1  # the last epoch validated (or resumed from)
    cb.on_stage("train", f"{config.mode} training for {config.num_epochs} epochs")
    cb.on_train_start()
    for epoch in range(start_epoch, config.num_epochs + 1):
        t0 = time.time()
        if config.mode == "gradual":
            now_open = trainable_stages(model, config.mode, epoch=epoch - 1, every=config.gradual_every)
            if now_open != open_stages:
                apply_freeze_policy(model, config.mode, epoch=epoch - 1, every=config.gradual_every)
                net = _wrap(model, config, setup, dist_ctx)  # DDP must see the new trainable set
                open_stages = now_open
        cpu0 = time.process_time()
        stats = train_one_epoch(net, p.images_train, p.y_train, config, loop)
        train_s, train_cpu_s = time.time() - t0, time.process_time() - cpu0
        val = None
        if epoch % every == 0 or epoch == config.num_epochs:
            val = evaluate(model, p.images_val, p.y_val, setup=setup, batch_size=config.batch_size,
                           mean=spec.mean, std=spec.std)
        seconds = time.time() - t0
        # images/s is the training pass's (as a plain script's epoch is); seconds include validation.
        record = {"epoch": epoch, **stats, "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
                  "train_seconds": round(train_s, 3), "train_cpu_seconds": round(train_cpu_s, 3),
                  "images_per_s": round(len(p.y_train) / train_s, 1) if train_s > 0 else None}
        if val is not None:
            record.update(val_loss=val["val_loss"], val_acc=val["val_acc"])
        if config.mode == "gradual":
            record["open_stages"] = open_stages
        state.epoch = epoch
        if val is not None and state.early.update(val["val_loss"], epochs=epoch - validated):
            record["best"] = True
            best_val = (epoch, val)
            if dist_ctx.is_main:
                save_checkpoint(run.best_checkpoint, model, config, classes, epoch)
        if val is not None:
            validated = epoch
        if dist_ctx.is_main:
            # last.pt before the metrics line: a kill between the two loses one line, not the epoch.
            save_checkpoint(run.last_checkpoint, model, config, classes, epoch,
                             extra={"training_state": state.state_dict()})
        cb.on_epoch_end(record)
        if state.early.stop and epoch < config.num_epochs:
            if dist_ctx.is_main:
                run.update_status(stopped_early=epoch, message=f"stopped early after epoch {epoch}: validation "
                                  f"loss did not improve for {config.patience} epochs")
            break
        if dist_ctx.any(cb.should_stop()):
            raise CancelledByUser()

    dist_ctx.barrier()
    blob = read_checkpoint(run.best_checkpoint, setup.device)
    model.load_state_dict(blob["state_dict"])
    images = {"val": p.images_val, "test": p.images_test}
    labels = {"val": p.y_val, "test": p.y_test}
    # The best epoch's validation pass was run on exactly these weights: no need to repeat it.
    known = {"val": best_val[1]} if best_val is not None and best_val[0] == blob["epoch"] else {}

    def evaluate_split(split: str) -> dict:
        x, y = images[split], labels[split]
        if x is None or y is None:  # _final_report asks only for the splits the data has
            raise RuntimeError(f"no {split} split to evaluate")
        return known.get(split) or evaluate(model, x, y, setup=setup, batch_size=config.batch_size,
                                            mean=spec.mean, std=spec.std)

    return _final_report(p, run, cb, dist_ctx, best_epoch=blob["epoch"], evaluate_split=evaluate_split)
