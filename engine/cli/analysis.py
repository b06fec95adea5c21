"""``insight`` and ``sweep``: what transfer buys on a dataset, and which backbone suits it.

Both end through :func:`engine.cli.common.report` (``--out``, ``--json``, ``--quiet``), so the pages' background
tasks (:mod:`engine.workflow.tasks`) run the very same commands.
"""
from __future__ import annotations

import sys
from pathlib import Path

from engine.errors import UserError
from engine.cli.common import report

__all__ = ["add_commands", "cmd_insight", "cmd_sweep"]


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
    return report(args, result, format_insight)


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
    return report(args, result, format_sweep)


def add_commands(sub) -> None:
    """Register ``insight``, ``sweep`` on ``sub``."""
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
