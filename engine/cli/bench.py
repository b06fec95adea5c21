"""``bench ...``: the benchmarks that print figures against a baseline measured in the same run.

``bench`` is a group; :func:`add_commands` returns its subparsers so the data-loop modules add
``bench labels`` and ``bench active`` beside these.
"""
from __future__ import annotations

import argparse
import json
import sys

from engine.errors import UserError
from engine.cli.common import print_json

__all__ = ["add_commands", "cmd_bench_train", "cmd_bench_recipe", "cmd_bench_scale", "cmd_bench_health",
           "cmd_bench_abuse", "cmd_bench_infer", "cmd_bench_flow"]


def cmd_bench_train(args) -> int:
    from engine.bench.train import bench_epochs, bench_train, format_epochs, format_report

    rows = bench_train(args.backbone, image_size=args.image_size, steps=args.steps, batch_size=args.batch_size,
                       dataset=args.data, device=args.device, amp=args.amp, pretrained=args.pretrained)
    print(json.dumps(rows, indent=2) if args.json else format_report(rows), flush=True)
    if args.epochs:
        epochs = bench_epochs(args.backbone[0], dataset=args.data, image_size=args.image_size, epochs=args.epochs,
                              batch_size=args.batch_size,
                              progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
        print(json.dumps(epochs, indent=2) if args.json else format_epochs(epochs))
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
        print_json(results)
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


def cmd_bench_health(args) -> int:
    from engine.bench.health import bench_health, format_report

    if args.n < 10:
        raise UserError("--n must be at least 10")
    report = bench_health(args.n, max_side=args.max_side)
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
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
        print_json(result)
    else:
        print(format_bench(result))
    return 0


def cmd_bench_flow(args) -> int:
    from engine.bench.flow import MODES, bench_flow, format_table

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise UserError(f"unknown mode(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    rows = bench_flow(args.data, image_size=args.image_size, modes=modes, repeats=args.repeats,
                      progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def cmd_bench_shift(args) -> int:
    from engine.bench.shift import bench_shift, format_table

    if args.batch < 5 or args.draws < 1 or args.photo_draws < 1:
        raise UserError("--batch must be at least 5, --draws and --photo-draws at least 1")
    results = [bench_shift(data, backbone=args.backbone, image_size=args.image_size, draws=args.draws,
                           batch=args.batch, photo_draws=args.photo_draws,
                           progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
               for data in args.data]
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return 0


def add_commands(sub) -> argparse._SubParsersAction:
    """Register ``bench`` and its benchmarks on ``sub``; returns the group's subparsers."""
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
    p = bench_sub.add_parser("flow", help="the Train page's built-in flow, click -> result, cold and with the "
                             "resident worker (fresh homes; the old click -> result is the follow-up's end)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--modes", default="cold,resident", help="comma-separated subset of cold,resident")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_flow)

    p = bench_sub.add_parser("shift", help="the batch test through the predict path: how often a batch of the same "
                             "data passes, and whether batches of photographs are told apart")
    p.add_argument("data", nargs="+", help="labelled datasets (a probe is trained on each)")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--draws", type=int, default=100, help="seeded batches of held-out images")
    p.add_argument("--photo-draws", type=int, default=20, help="seeded batches of photographs")
    p.add_argument("--batch", type=int, default=50, help="images per batch")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_shift)
    return bench_sub
