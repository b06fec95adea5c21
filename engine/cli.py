"""``python -m engine ...``: the same operations the pages offer, for scripts and benchmarks.

Bad input exits with status 2 and one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.errors import UserError

__all__ = ["main", "build_parser"]


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_inspect(args) -> int:
    from engine.data.dataset import load_dataset

    dataset = load_dataset(args.data, val_fraction=args.val_fraction)
    summary = dataset.summary()
    if args.json:
        _print_json(summary)
        return 0
    print(f"dataset {summary['name']}: {summary['num_images']} images, {len(summary['classes'])} classes"
          f" ({summary['num_skipped']} skipped)")
    for split, counts in summary["counts"].items():
        print(f"  {split}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    print(f"  image sizes: {summary['image_sizes']['min']} .. {summary['image_sizes']['max']}; modes {summary['modes']}")
    for row in summary["skipped"][:20]:
        print(f"  skipped {row['path']}: {row['status']}")
    for problem in summary["problems"]:
        print(f"  warning: {problem}")
    return 0


def _config_from_args(args):
    from engine.training.config import TrainConfig

    return TrainConfig(dataset=str(args.data), backbone=args.backbone, mode=args.mode, epochs=args.epochs,
                       lr=args.lr, batch_size=args.batch_size, image_size=args.image_size, augment=args.augment,
                       seed=args.seed, device=args.device, amp=args.amp, val_fraction=args.val_fraction,
                       unfreeze_stages=args.unfreeze_stages,
                       channels_last=args.channels_last)


class _PrintProgress:
    """Epoch lines on stderr for people watching a terminal."""

    def on_stage(self, stage, message=""):
        print(f"[{stage}] {message}", file=sys.stderr, flush=True)

    def on_train_start(self): ...
    def on_progress(self, done, total, stage): ...

    def on_epoch_end(self, r):
        print(f"epoch {r['epoch']}: train_loss {r['train_loss']:.4f} train_acc {r['train_acc']:.3f} "
              f"val_loss {r['val_loss']:.4f} val_acc {r['val_acc']:.3f} ({r['seconds']:.1f}s)",
              file=sys.stderr, flush=True)

    def should_stop(self):
        return False


def cmd_train(args) -> int:
    from engine.models import get_spec
    from engine.runs import Run, new_run
    from engine.training.runner import train

    config = _config_from_args(args)
    get_spec(config.backbone)  # fail fast on an unknown name
    if args.out:
        out = Path(args.out)
        if (out / "config.json").exists():
            raise UserError(f"'{out}' already holds a run; choose a new --out folder")
        out.mkdir(parents=True, exist_ok=True)
        run = Run(out)
    else:
        run = new_run(f"{config.backbone}-{config.mode}")
    run.write_config(config.to_dict())
    report = train(config, run, callbacks=[_PrintProgress()])
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
        train(config, run, callbacks=[_PrintProgress()])
    except CancelledByUser:
        return 0
    run.update_status(state="running", stage="export", message="exporting to ONNX and checking parity")
    try:
        parity = export_run(run.path)
        run.update_status(state="done", stage="done", export=parity)
    except Exception as exc:  # training succeeded; the run stays usable without an export
        run.update_status(state="done", stage="done", export={"passed": False, "error": str(exc)})
    return 0


def cmd_export(args) -> int:
    from engine.export import ExportParityError, export_run

    try:
        parity = export_run(args.run_dir)
    except ExportParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"top-1 agreement {parity['top1_agreement']:.4f} on {parity['images']} validation images; "
          f"max |logit diff| {parity['max_abs_logit_diff']:.2e}")
    print(f"wrote {Path(args.run_dir) / 'export' / 'model.onnx'}")
    return 0


def cmd_predict(args) -> int:
    from engine.inference import OnnxClassifier

    classifier = OnnxClassifier(args.model)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise UserError(f"image file '{missing[0]}' does not exist")
    for path, result in zip(args.images, classifier.predict(args.images, top_k=args.top_k)):
        print(json.dumps({"image": path, **result}))
    return 0


def cmd_backbones(args) -> int:
    from engine.models import backbone_catalogue

    rows = backbone_catalogue()
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'backbone':<20}{'params(M)':>10}{'GFLOPs':>8}{'top1':>7}  available")
    for r in rows:
        print(f"{r['backbone']:<20}{r['params_m']:>10}{r['gflops']:>8}{r['imagenet_top1']:>7}  "
              f"{'yes' if r['available'] else 'no'} ({r['weights_source']})")
    return 0


def cmd_worker(args) -> int:
    from engine.jobs import dispatch_forever

    dispatch_forever(idle_exit_s=args.idle_exit)
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
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("train", help="fine-tune a backbone on a dataset")
    p.add_argument("data")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--mode", default="linear", choices=["linear", "partial", "full", "scratch"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int)
    p.add_argument("--augment", default="light")
    p.add_argument("--unfreeze-stages", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--out", help="run directory to create (default: a new one under workspace/runs)")
    p.add_argument("--export", action="store_true", help="export to ONNX after training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="export a run to ONNX and check parity")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="classify images with an exported model")
    p.add_argument("model")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("backbones", help="list backbones and whether their weights are available")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("setup", help="seed offline weights and the built-in dataset")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("worker", help="(internal) drain the job queue")
    p.add_argument("--idle-exit", type=float, default=5.0)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("run-job", help="(internal) run one queued job")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_run_job)
    return parser


def main(argv: list[str] | None = None) -> int:
    from engine.data.images import ImageProblem

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ImageProblem) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
