"""The unlabelled-pool commands of ``python -m engine``: ``suggest`` and ``bench active``, and the summary
line ``predict --run`` ends with. :func:`engine.cli.build_parser` registers them with :func:`add_commands`.
"""
from __future__ import annotations

import json
import sys

from engine.errors import UserError

__all__ = ["add_commands", "predict_summary", "cmd_suggest", "cmd_bench_active"]


def predict_summary(result: dict) -> dict:
    """The last line of ``predict --run``: how many images, how many flagged, and the batch test in words."""
    rows = result.get("rows", [])
    flagged = sum(1 for r in rows if r.get("unlike_training"))
    test = result.get("batch_test") or {"available": False,
                                        "reason": (result.get("ood") or {}).get("reason", "no images were read")}
    return {"summary": "batch", "images": len(rows), "errors": len(result.get("errors", [])),
            "flagged": flagged, "batch_test": test, "sentence": test.get("sentence") or test.get("reason")}


def cmd_suggest(args) -> int:
    from engine.data.dataset import load_dataset
    from engine.dataloop.pool import POOL_IMAGE_SIZE, LabelLoop, resolve_pool

    dataset = load_dataset(args.data)
    loop = LabelLoop(dataset, resolve_pool(dataset, args.pool), backbone=args.backbone,
                     image_size=args.image_size or POOL_IMAGE_SIZE)
    rows = loop.suggest(args.k, strategy=args.strategy)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        for i, row in enumerate(rows, 1):
            print(f"{i:3d}. {row['path']}  ->  {row['suggested']} ({100 * row['confidence']:.0f} %)")
    return 0


def cmd_bench_active(args) -> int:
    from engine.bench.active import bench_active, format_table
    from engine.dataloop.active import STRATEGIES

    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    unknown = set(strategies) - set(STRATEGIES)
    if unknown or "random" not in strategies:
        raise UserError(f"--strategies must include random and come from {', '.join(STRATEGIES)}")
    if not 1 <= args.seeds <= 50 or not 1 <= args.rounds <= 50:
        raise UserError("--seeds and --rounds must be between 1 and 50")
    results = []
    for data in args.data:
        results.append(bench_active(data, backbone=args.backbone, image_size=args.image_size, seeds=args.seeds,
                                    start_per_class=args.start_per_class, batch=args.batch, rounds=args.rounds,
                                    strategies=strategies,
                                    progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)))
        if not args.json:
            print(format_table(results[-1:]), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def add_commands(sub, bench_sub) -> None:
    # Only light modules here: every command's parser is built from them (engine.dataloop.pool imports torch).
    from engine.bench.active import ROUNDS, SEEDS
    from engine.dataloop.active import DEFAULT_STRATEGY, STRATEGIES

    p = sub.add_parser("suggest", help="the next images of an unlabelled pool to label, each pre-labelled by the "
                       "current model (the probe on the dataset's labels and the confirmed pool labels)")
    p.add_argument("data", help="the labelled dataset (built-in name, folder or zip)")
    p.add_argument("--pool", help="folder of unlabelled images (default: DATA/unlabelled/)")
    p.add_argument("--k", type=int, default=20, help="how many images")
    p.add_argument("--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY)
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--image-size", type=int, help="px (default: the label loop's, POOL_IMAGE_SIZE)")
    p.add_argument("--json", action="store_true", help="one JSON line per image: path, suggested, confidence")
    p.set_defaults(func=cmd_suggest)

    p = bench_sub.add_parser("active", help="simulated labelling loop: random vs margin vs k-center vs the default, "
                             "accuracy against labels with 95 %% intervals")
    p.add_argument("data", nargs="+", help="labelled datasets; their labels are held back as the oracle")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=SEEDS)
    p.add_argument("--rounds", type=int, default=ROUNDS,
                   help="batches after the start (fewer on a small pool: the largest budget stays within half of it)")
    p.add_argument("--start-per-class", type=int, default=2)
    p.add_argument("--batch", type=int, help="images per round (default: 2 per class)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated, random included")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_active)
