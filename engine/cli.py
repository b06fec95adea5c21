"""``python -m engine ...``: the same operations the pages offer, for scripts and benchmarks.

Bad input exits with status 2 and one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from engine.errors import UserError

__all__ = ["main", "build_parser"]


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_inspect(args) -> int:
    from engine.data.health import health_check

    dataset, health = health_check(args.data, val_fraction=args.val_fraction)
    summary = dataset.summary()
    if args.embedding:
        from engine.data.embedding import embedding_map

        points = embedding_map(dataset, max_images=args.embedding_max, method=args.embedding_method)
        health["embedding"] = {"points": int(len(points)), "suspect": int(points["suspect"].sum()),
                               "suspects": points.loc[points["suspect"], ["path", "label", "neighbour_agreement"]]
                               .head(50).to_dict("records")}
    if args.json:
        _print_json({**summary, "health": health})
        return 0
    print(f"dataset {summary['name']}: {summary['num_images']} images, {len(summary['classes'])} classes"
          f" ({summary['num_skipped']} skipped)")
    for split, counts in summary["counts"].items():
        print(f"  {split}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    sizes = summary["image_sizes"]
    print(f"  image sizes: {sizes['min']} .. {sizes['max']}; modes {summary['modes']}")
    for row in summary["skipped"][:20]:
        print(f"  skipped {row['path']}: {row['status']}")
    for warning in health["warnings"]:
        print(f"  warning: {warning}")
    balance = health["balance"]
    print(f"  imbalance ratio {balance['imbalance_ratio']}; suggested class weights {balance['class_weights']}")
    split = health["split"]
    generated = f" (val_fraction {split['val_fraction']}, seed {split['seed']})"
    print(f"  split: {split['source']} {split['sizes']}" + (generated if split["source"] == "generated" else ""))
    dup = health["duplicates"]
    for kind in ("exact", "near"):
        d = dup[kind]
        print(f"  {kind} duplicate pairs: {d['pairs']} (within class {d['within_class']}, conflicting labels "
              f"{d['conflicting_labels']}, across splits {d['across_splits']})")
    if "embedding" in health:
        print(f"  embedding: {health['embedding']['suspect']} of {health['embedding']['points']} images have "
              "neighbours that mostly carry another label")
    return 0


def _config_from_args(args):
    """The TrainConfig of a ``train``/``lr-find`` command line: ``--config FILE`` (a config.json,
    how parent processes hand a config to a child), else the flags generated from its fields."""
    from engine.training.config import TrainConfig
    from engine.workspace import read_json

    if args.config:
        data = read_json(args.config)
        if not isinstance(data, dict) or "dataset" not in data:
            raise UserError(f"'{args.config}' is not a training config (a config.json with a 'dataset' field)")
        return TrainConfig.from_dict(data)
    if not args.data:
        raise UserError("give a dataset (a built-in name, a folder or a .zip), or --config FILE")
    args.dataset = str(args.data)
    return TrainConfig.from_namespace(args)


def _print_progress():
    """A training callback printing stage and epoch lines on stderr, for people watching a terminal."""
    from engine.training.callbacks import Callback

    class PrintProgress(Callback):
        def on_stage(self, stage, message=""):
            print(f"[{stage}] {message}", file=sys.stderr, flush=True)

        def on_epoch_end(self, r):
            val = f" val_loss {r['val_loss']:.4f} val_acc {r['val_acc']:.3f}" if "val_loss" in r else ""
            print(f"epoch {r['epoch']}: train_loss {r['train_loss']:.4f} train_acc {r['train_acc']:.3f}{val} "
                  f"({r['seconds']:.1f}s)", file=sys.stderr, flush=True)

    return PrintProgress()


def cmd_train(args) -> int:
    from engine.models import get_spec
    from engine.runs import Run, new_run
    from engine.training.runner import train

    config = _config_from_args(args)
    if args.queue:  # what the Train page does: check, create the run, queue it for a worker
        from engine.jobs.queue import queue_run

        print(f"queued {queue_run(config).path}")
        return 0
    get_spec(config.backbone)  # fail fast on an unknown name
    if config.nproc > 1 and "WORLD_SIZE" not in os.environ:
        # Re-launch this same command as N DistributedDataParallel processes.
        from engine.training.distributed import torchrun_command

        import tempfile

        from engine.workspace import write_json_atomic

        # The children get the config itself, not a re-parsed command line.
        with tempfile.TemporaryDirectory(prefix="ts-torchrun-") as tmp:
            config_file = Path(tmp) / "config.json"
            write_json_atomic(config_file, config.to_dict())
            argv = ["train", "--config", str(config_file)]
            argv += (["--out", args.out] if args.out else []) + (["--export"] if args.export else [])
            return subprocess.call(torchrun_command(config.nproc, argv))
    from engine.training.distributed import init_distributed

    dist_ctx = init_distributed(config.device)
    if not dist_ctx.is_main:
        import torch.distributed as dist

        shared = [None]
        dist.broadcast_object_list(shared, src=0)  # rank 0 names the run directory
        train(config, Run(shared[0]))
        return 0
    if args.out:
        out = Path(args.out)
        if (out / "config.json").exists():
            raise UserError(f"'{out}' already holds a run; choose a new --out folder")
        out.mkdir(parents=True, exist_ok=True)
        run = Run(out)
    else:
        run = new_run(f"{config.backbone}-{config.mode}")
    run.write_config(config.to_dict())
    if dist_ctx.enabled:
        import torch.distributed as dist

        dist.broadcast_object_list([str(run.path.resolve())], src=0)
    report = train(config, run, callbacks=[_print_progress()])
    if args.export:
        from engine.export import export_run

        export_run(run.path)
    print(json.dumps({"run_dir": str(run.path), "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}))
    return 0


def cmd_run_job(args) -> int:
    """What the dispatcher starts: train the run in RUN_DIR from its config.json, then export."""
    from engine.export import export_run
    from engine.runs import Run
    from engine.training.callbacks import CancelledByUser
    from engine.training.config import TrainConfig
    from engine.training.runner import train

    run = Run(args.run_dir)
    config = TrainConfig.from_dict(run.config())
    try:
        train(config, run, callbacks=[_print_progress()], resume=args.resume, finish=False)
    except CancelledByUser:
        return 0
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 exports
    run.update_status(state="running", stage="evaluate", message="evaluating: metrics, calibration, OOD reference")
    try:
        from engine.evaluation import evaluate_run

        evaluate_run(run.path)  # before export: export uses the temperature it fits
    except Exception as exc:  # the run stays usable; the Evaluate page can retry
        print(f"evaluation failed: {exc}", file=sys.stderr, flush=True)
    run.update_status(state="running", stage="export", message="exporting to ONNX and checking parity")
    try:
        export = export_run(run.path)
    except Exception as exc:  # training succeeded; the run stays usable without an export
        export = {"passed": False, "error": str(exc)}
    run.update_status(state="done", stage="done", message="", export=export)
    return 0


def cmd_resume(args) -> int:
    from engine.runs import Run
    from engine.training.runner import resume

    run = Run(args.run_dir)
    if args.queue:
        from engine.jobs.queue import submit

        submit(run, resume=True)
        print(f"queued {run.path} to resume")
        return 0
    report = resume(run, callbacks=[_print_progress()])
    print(json.dumps({"run_dir": str(run.path), "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}))
    return 0


def cmd_lr_find(args) -> int:
    from engine.models import get_spec
    from engine.training.lr_finder import find_lr
    from engine.workspace import write_json_atomic

    config = _config_from_args(args)
    get_spec(config.backbone)
    result = find_lr(config, steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr)
    out = Path(args.out) if args.out else Path(f"lr-find-{config.backbone}-{config.mode}.json")
    write_json_atomic(out, result)
    print(f"suggested lr {result['suggested_lr']:.2e} (steepest descent {result['steepest']:.2e}, "
          f"min-loss/10 {result['min_div10']:.2e}) over {result['steps']} steps; curve written to {out}")
    return 0


def cmd_bench_health(args) -> int:
    from engine.bench.health import bench_health, format_report

    if args.n < 10:
        raise UserError("--n must be at least 10")
    report = bench_health(args.n, max_side=args.max_side)
    if args.json:
        _print_json(report)
    else:
        print(format_report(report))
    return 0


def cmd_bench_recipe(args) -> int:
    from engine.bench.recipe import METHODS, bench_recipe, format_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    results = []
    for data in args.data:
        results.append(bench_recipe(data, image_size=args.image_size, backbone=args.backbone, methods=methods,
                                    epochs=args.epochs, variants=[v for v in args.variants.split(",") if v],
                                    progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)))
        if not args.json:
            print(format_table(results[-1:]), flush=True)
    if args.json:
        _print_json(results)
    elif len(results) > 1:
        print("\n" + format_table(results))
    return 0


def cmd_bench_scale(args) -> int:
    from engine.bench.scale import SIZES, bench_scale, format_table

    rows = bench_scale(args.sizes or SIZES, workdir=args.workdir, image_size=args.image_size,
                       rss_limit_gb=args.rss_limit_gb,
                       progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def cmd_bench_train(args) -> int:
    from engine.bench.train import bench_train, format_report

    from engine.bench.train import bench_epochs, format_epochs

    rows = bench_train(args.backbone, image_size=args.image_size, steps=args.steps, batch_size=args.batch_size,
                       dataset=args.data, device=args.device, amp=args.amp, pretrained=args.pretrained)
    print(json.dumps(rows, indent=2) if args.json else format_report(rows), flush=True)
    if args.epochs:
        epochs = bench_epochs(args.backbone[0], dataset=args.data, image_size=args.image_size, epochs=args.epochs,
                              batch_size=args.batch_size,
                              progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
        print(json.dumps(epochs, indent=2) if args.json else format_epochs(epochs))
    return 0


def _add_train_options(p) -> None:
    """Options shared by ``train`` and ``lr-find``: one per TrainConfig field, generated from it."""
    from engine.training.config import TrainConfig

    p.add_argument("data", nargs="?", help="built-in name, folder or .zip of class folders")
    p.add_argument("--config", help="a config.json to run as it is (the other options are then ignored)")
    TrainConfig.add_arguments(p, exclude=("dataset",))


def cmd_export(args) -> int:
    from engine.export import VARIANTS, ExportParityError, export_run, parity_rows

    variants = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        parity = export_run(args.run_dir, variants=variants, max_parity_images=args.max_images,
                            progress=lambda m: print(f"[export] {m}", file=sys.stderr, flush=True))
    except ExportParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"top-1 agreement {parity['top1_agreement']:.4f} on {parity['images']} validation images; "
          f"max |logit diff| {parity['max_abs_logit_diff']:.2e}")
    for r in parity_rows(parity):
        diff, delta = (float("nan") if x is None else x for x in (r["max |logit diff|"], r["Δ accuracy (points)"]))
        print(f"  {r['variant']:<13} {r['file']:<20} {r['MB']:6.2f} MB  agreement {r['top-1 agreement %']:.2f}%  "
              f"max|diff| {diff:.2e}  accuracy {r['accuracy %']:.2f}% ({delta:+.2f} pts)  "
              f"flipped {r['images flipped']}  [{r['result']}]")
    if args.bundle:
        from engine.export.bundle import build_bundle

        print(f"wrote {build_bundle(args.run_dir)}")
    print(f"wrote {Path(args.run_dir) / 'export' / 'model.onnx'}")
    return 0


def cmd_bench_abuse(args) -> int:
    from engine.bench.abuse import bench_abuse, format_report

    rows = bench_abuse(images=args.images, side=args.side, entries=args.entries, parquet_rows=args.parquet_rows,
                       csv_rows=args.csv_rows, bomb_mb=args.bomb_mb, run_dir=args.run_dir,
                       progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
    print(format_report(rows))
    return 0


def cmd_bench_infer(args) -> int:
    from engine.bench.infer import bench_infer, format_bench

    result = bench_infer(args.run_dir, image_size=args.image_size, iters=args.iters, batch=args.batch,
                         threads=args.threads, progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
    if args.json:
        _print_json(result)
    else:
        print(format_bench(result))
    return 0


def _format_evaluation(s: dict) -> str:
    h = s["headline"]
    lines = [f"run {s['run']}: {s['images']} validation images, {len(s['classes'])} classes"]
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        lines.append(f"  {name:<18} {h[name]['value']:.4f}  95% CI [{h[name]['low']:.4f}, {h[name]['high']:.4f}]")
    c = s["calibration"]
    ece = f"ECE {c['ece_before']:.4f}" + (f" -> {c['ece_after']:.4f}" if c.get("fitted") else "")
    lines.append(f"  temperature {c['temperature']:.4g} ({'fitted' if c.get('fitted') else c.get('reason')}); {ece}")
    o = s["ood"]
    lines.append(f"  OOD: {o['method']}; flag above {o['threshold']:.4f} (p{o['flag_percentile']} of validation); "
                 f"validation flagged {100 * o['val_flagged_rate']:.1f}%")
    lines.append(f"  overfitting: {s['overfitting']['reading']}")
    lines.append(f"  {'class':<20}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}")
    for r in s["per_class"]:
        lines.append(f"  {r['class']:<20}{r['precision']:>10.3f}{r['recall']:>8.3f}{r['f1']:>8.3f}{r['support']:>9}")
    lines.append(f"  confusion matrix (rows: true, columns: predicted): {s['confusion']['counts']}")
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from engine.evaluation import evaluate_run, load_evaluation
    from engine.runs import Run

    run = Run(args.run_dir)
    run.config()  # not a run directory: one clear line
    stored = None if args.recompute else load_evaluation(run.path)
    if stored is not None and not stored.stale:
        summary = stored.summary
    else:
        say = None if args.quiet else (lambda m: print(f"[evaluate] {m}", file=sys.stderr, flush=True))
        summary = evaluate_run(run.path, progress=say, n_resamples=args.resamples)
    if args.json:
        _print_json(summary)
    elif not args.quiet:
        print(_format_evaluation(summary))
    return 0


def cmd_predict(args) -> int:
    from engine.export.inference import OnnxClassifier

    if args.run_dir:  # predict --run RUN_DIR IMAGE...: the run's export; every argument is an image
        from engine.runs import Run

        args.images, args.model = [a for a in (args.model, *args.images) if a], str(Run(args.run_dir).onnx_file)
    if not args.images:
        raise UserError("give at least one image to predict")
    classifier = OnnxClassifier(args.model)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise UserError(f"image file '{missing[0]}' does not exist")
    run_dir = Path(args.model).resolve().parent.parent
    if (run_dir / "config.json").is_file():  # a run's export: add the unsure answer and the OOD flag
        from engine.export.analyse import analyse_images

        files = [(p, Path(p).read_bytes()) for p in args.images]
        result = analyse_images(run_dir, files, top_k=args.top_k, threshold=args.threshold, model_file=args.model,
                                budget=None)  # the operator's own command: no per-request budget
        rows = {r["file"]: r for r in result["rows"]} | {e["file"]: e for e in result["errors"]}
        for path in args.images:
            row = {k: v for k, v in rows[path].items() if k not in ("file", f"top-{args.top_k}")}
            print(json.dumps({"image": path, **row}))
        if args.run_dir:  # one summary line: the batch test against the training data
            from engine.dataloop.pool_commands import predict_summary

            print(json.dumps(predict_summary(result)))
        return 0
    for path, result in zip(args.images, classifier.predict(args.images, top_k=args.top_k)):
        print(json.dumps({"image": path, **result}))
    return 0


def cmd_backbones(args) -> int:
    from engine.features.catalogue import backbone_catalogue

    if args.measure:
        from engine.features.latency import measure_latency

        for r in backbone_catalogue():
            if r["available"]:
                print(f"[backbones] measuring {r['backbone']} at {args.image_size} px", file=sys.stderr, flush=True)
                measure_latency(r["backbone"], args.image_size)
    rows = backbone_catalogue(image_size=args.image_size)
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'backbone':<20}{'family':<18}{'params(M)':>10}{'GFLOPs':>8}{'top1':>7}{'ORT ms b1':>10}{'b32':>7}  "
          f"weights")
    for r in rows:
        lat = (f"{r['ort_ms_b1']:>10.2f}{r['ort_ms_b32']:>7.2f}" if r.get("ort_ms_b1") is not None
               else f"{'-':>10}{'-':>7}")
        print(f"{r['backbone']:<20}{r['family']:<18}{r['params_m']:>10}{r['gflops']:>8}{r['imagenet_top1']:>7}{lat}  "
              f"{r['weights_source']}")
    return 0


def _report(args, result: dict, fmt) -> int:
    """A background-capable command's ending: ``--out FILE`` (JSON), then ``--json``, the text, or ``--quiet``."""
    from engine.workspace import write_json_atomic

    if args.out:
        write_json_atomic(Path(args.out), result)
    if args.json:
        _print_json(result)
    elif not args.quiet:
        print(fmt(result))
    return 0


def cmd_insight(args) -> int:
    from engine.insight import compute_insight, format_insight
    from engine.models import valid_backbone

    valid_backbone(args.backbone)  # an unknown name: one line, before any work
    if not 16 <= args.image_size <= 512:
        raise UserError(f"image size must be between 16 and 512 px, got {args.image_size}")
    if not 1 <= args.draws <= 50:
        raise UserError(f"draws must be between 1 and 50, got {args.draws}")
    say = None if args.quiet else (lambda m: print(f"[insight] {m}", file=sys.stderr, flush=True))
    if args.quick_runs:  # three short runs at one budget, so the gain table has a fine-tune to show
        from engine.insight.gain import quick_gain_configs
        from engine.runs import new_run
        from engine.training.runner import train

        for config in quick_gain_configs(args.data, args.backbone, args.image_size, epochs=args.quick_epochs):
            run = new_run(f"insight-{config.backbone}-{config.mode}")
            run.write_config(config.to_dict())
            train(config, run)
    result = compute_insight(args.data, args.backbone, image_size=args.image_size, draws=args.draws,
                             scratch_sizes=0 if args.no_scratch else 2, scratch_epochs=args.scratch_epochs,
                             progress=say)
    return _report(args, result, format_insight)


def cmd_sweep(args) -> int:
    from engine.sweep.sweep import format_sweep, progress_writer, run_sweep

    names = [b.strip() for b in args.backbones.split(",") if b.strip()]
    progress = None
    if args.progress_file:
        progress = progress_writer(Path(args.progress_file), list(dict.fromkeys(names)))
    elif not args.quiet:
        seen: set = set()

        def progress(name, done, total, stage):
            if (name, stage) not in seen or done == total:
                seen.add((name, stage))
                print(f"[sweep] {name}: {stage} {done}/{total}", file=sys.stderr, flush=True)

    result = run_sweep(args.data, names, image_size=args.image_size, progress=progress)
    return _report(args, result, format_sweep)


def cmd_add_weights(args) -> int:
    from engine.models.supplied import install_weights

    path = install_weights(args.backbone, args.file)
    print(f"checked {args.file} against {args.backbone} key by key and shape by shape; stored as {path}")
    return 0


def cmd_worker(args) -> int:
    from engine.jobs.queue import dispatch_forever

    dispatch_forever(idle_exit_s=args.idle_exit, wait_for_lock=args.wait_lock)
    return 0


def cmd_setup(args) -> int:
    """Seed the offline weight cache and build the default dataset (run by the README commands)."""
    from engine.data.builtin import DEFAULT_DATASET, materialise
    from engine.models.weights import seed_offline_weights

    for path in seed_offline_weights():
        print(f"seeded {path}")
    print(f"built-in dataset at {materialise(DEFAULT_DATASET)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Transfer Studio engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="summarise a dataset")
    p.add_argument("data", help="folder of class subfolders, a .zip of the same, or a built-in dataset name")
    p.add_argument("--json", action="store_true")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--embedding", action="store_true", help="also compute the MobileNetV2 embedding map (slower)")
    p.add_argument("--embedding-max", type=int, default=2000, help="images sampled for the embedding map")
    p.add_argument("--embedding-method", default="pca", choices=["pca", "tsne"], help="2-D projection of the map")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("train", help="fine-tune a backbone on a dataset")
    _add_train_options(p)
    p.add_argument("--out", help="run directory to create (default: a new one under workspace/runs)")
    p.add_argument("--export", action="store_true", help="export to ONNX after training")
    p.add_argument("--queue", action="store_true",
                   help="check the weights and the dataset, then queue the run for a worker (as the Train page does)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("resume", help="continue an interrupted run from its last epoch checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--queue", action="store_true", help="resume through the job queue instead of in this process")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("lr-find", help="learning-rate range test: print a suggested LR, write the curve as JSON")
    _add_train_options(p)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=1.0)
    p.add_argument("--out", help="JSON file for the curve (default: lr-find-BACKBONE-MODE.json)")
    p.set_defaults(func=cmd_lr_find)

    # ``bench`` is a group: ``bench train`` here; other benchmarks add their own sub-subcommand.
    bench = sub.add_parser("bench", help="benchmarks that print figures and ratios")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    p = bench_sub.add_parser("train", help="training images/s: real data path vs synthetic on-device data")
    p.add_argument("--backbone", nargs="+", default=["mobilenet_v2"])
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data", default="fashion-mnist", help="dataset for the real-data path")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto")
    p.add_argument("--pretrained", action="store_true",
                   help="load pretrained weights (throughput does not depend on them)")
    p.add_argument("--epochs", type=int, default=3, help="then whole epochs of the product's fine-tune and of "
                   "the reference script, images/s per epoch (0: skip)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_train)

    p = bench_sub.add_parser("recipe", help="product probe and fine-tune vs LogisticRegression and a plain "
                             "torchvision fine-tune, on the same split, size and budget")
    p.add_argument("data", nargs="+", help="datasets (built-in names, folders or zips)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--methods", default="probe,logreg,finetune,reference",
                   help="comma-separated subset of probe,logreg,finetune,reference")
    p.add_argument("--epochs", type=int, help="fine-tune epochs for both (default: the product's)")
    p.add_argument("--variants", default="", help="comma-separated recipe variants, one more fine-tune each "
                   "(engine/bench/recipe.py VARIANTS: bn-adapt, bn-train, lr-0.1, lr-1, aug-none, aug-strong, ...)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_recipe)

    p = bench_sub.add_parser("scale", help="linear probe and health check on 7k/21k/70k Fashion-MNIST PNGs: "
                             "seconds, peak RSS, cache bytes")
    p.add_argument("--sizes", type=int, nargs="+", help="images per measured folder (default: 7,000 21,000 70,000)")
    p.add_argument("--workdir", default="/tmp/ts-bench-scale", help="where the PNG folders and runs are written")
    p.add_argument("--image-size", type=int, help="probe image size (default: the CLI's)")
    p.add_argument("--rss-limit-gb", type=float, default=6.0, help="kill a measured child above this RSS")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_scale)

    p = bench_sub.add_parser("health", help="dataset health check images/s vs a naive decode-and-hash baseline")
    p.add_argument("--n", type=int, default=10_000, help="images to draw")
    p.add_argument("--max-side", type=int, default=64, help="largest drawn image side in px")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_health)

    p = bench_sub.add_parser("abuse", help="hostile uploads (huge images, zip and table bombs) through the real "
                             "code paths, each in a child process: peak RSS and what the visitor was told")
    p.add_argument("--run-dir", default=None, help="an exported run to predict with (default: train a small one)")
    p.add_argument("--images", type=int, default=40, help="solid PNGs in the predict zip")
    p.add_argument("--side", type=int, default=6000, help="their side, px")
    p.add_argument("--entries", type=int, default=1_000_000, help="empty entries in the entry-count zip")
    p.add_argument("--parquet-rows", type=int, default=1_000_000_000, help="rows of the run-length-encoded table")
    p.add_argument("--csv-rows", type=int, default=19_000_000, help="rows of the CSV table bomb (190 MB)")
    p.add_argument("--bomb-mb", type=int, default=1024, help="unpacked MB of the zip-bomb entry")
    p.set_defaults(func=cmd_bench_abuse)

    p = bench_sub.add_parser("infer", help="inference latency/throughput: PyTorch eager vs onnxruntime fp32/int8")
    p.add_argument("run_dir")
    p.add_argument("--image-size", type=int, help="default: the run's image size")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, help="threads for every engine (default: all cores)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_infer)

    p = sub.add_parser("export", help="export a run to ONNX and check parity")
    p.add_argument("run_dir")
    p.add_argument("--variants", default="fp32",
                   help="comma-separated: fp32,fp32-uint8in,fp16,int8, or 'all' (fp32 is always exported)")
    p.add_argument("--max-images", type=int, help="check parity on at most this many validation images")
    p.add_argument("--bundle", action="store_true", help="also write export/bundle.zip")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="evaluate a run (metrics with CIs, calibration, OOD reference); stored once")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true")
    p.add_argument("--recompute", action="store_true", help="evaluate again even if an up-to-date evaluation exists")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the confidence intervals")
    p.add_argument("--quiet", action="store_true", help="print nothing (the background task)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images with an exported model (MODEL.onnx IMAGE...), or with a "
                       "run's export (--run RUN_DIR IMAGE...: per-image OOD flag, then a batch-test summary line)")
    p.add_argument("model", nargs="?", help="the .onnx file (omit with --run)")
    p.add_argument("images", nargs="*")
    p.add_argument("--run", dest="run_dir", help="a run directory: predict with its export")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--threshold", type=float, default=0.0, help="answer 'unsure' below this calibrated probability")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("insight", help="what transfer buys on this data: data-efficiency curve, per-stage probe, "
                       "domain distance, transfer gain, advice")
    p.add_argument("data", help="built-in name, folder or .zip of class folders")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--image-size", type=int, default=64, help="feature resolution in px (the ImageNet head uses 224)")
    p.add_argument("--draws", type=int, default=5, help="random draws per curve point")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch baseline (the slow part on CPU)")
    p.add_argument("--scratch-epochs", type=int, default=5)
    p.add_argument("--quick-runs", action="store_true",
                   help="first train scratch, linear probe and full fine-tune at one short budget (new runs)")
    p.add_argument("--quick-epochs", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="also write the result as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="print nothing (the background task)")
    p.set_defaults(func=cmd_insight)

    p = sub.add_parser("backbones", help="list backbones, whether their weights load now, and latency measured here")
    p.add_argument("--json", action="store_true")
    p.add_argument("--image-size", type=int, default=224, help="show the latency measured at this size")
    p.add_argument("--measure", action="store_true", help="measure every loadable backbone first (cached)")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("sweep", help="probe 2-6 loadable backbones on a dataset: validation accuracy against "
                       "latency measured here, with a recommendation")
    p.add_argument("data", help="built-in name, folder or .zip of class folders")
    p.add_argument("--backbones", required=True, help="comma-separated, e.g. mobilenet_v2,efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=224, help="input size in px for every backbone")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="also write the result as JSON to this file")
    p.add_argument("--progress-file", help="(internal) keep per-backbone progress in this JSON file")
    p.add_argument("--quiet", action="store_true", help="print nothing (the background task)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("add-weights", help="check a weights file (safetensors or a state dict) against a "
                       "registered architecture and make it that backbone's pretrained weights")
    p.add_argument("backbone")
    p.add_argument("file")
    p.set_defaults(func=cmd_add_weights)

    p = sub.add_parser("setup", help="seed offline weights and the built-in dataset")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("worker", help="(internal) drain the job queue")
    p.add_argument("--idle-exit", type=float, default=5.0)
    p.add_argument("--wait-lock", type=float, default=0.0, help="seconds to wait for a dying dispatcher's lock")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("run-job", help="(internal) run one queued job")
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=cmd_run_job)

    from engine.hosting.commands import add_commands

    add_commands(sub)  # health, limits, cleanup
    from engine.dataloop.commands import add_commands as add_dataloop_commands

    add_dataloop_commands(sub, bench_sub)  # label-issues, relabel, drop, undo, corrections, bench labels
    from engine.dataloop.pool_commands import add_commands as add_pool_commands

    add_pool_commands(sub, bench_sub)  # suggest, bench active
    return parser


def main(argv: list[str] | None = None) -> int:
    from engine.data.images import ImageProblem

    from engine.hosting.commands import enter_workspace

    args = build_parser().parse_args(argv)
    try:
        enter_workspace(args)  # a run directory's own workspace (hosted profile)
        return args.func(args)
    except (UserError, ImageProblem) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
