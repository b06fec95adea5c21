"""The data-loop subcommands of ``python -m engine``: ``label-issues``, ``relabel``, ``drop``, ``undo``,
``corrections`` and ``bench labels``. :func:`engine.cli.build_parser` registers them with :func:`add_commands`.
"""
from __future__ import annotations

import json

__all__ = ["add_commands"]


def _dataset(args):
    from engine.data.dataset import load_dataset

    return load_dataset(args.data, val_fraction=args.val_fraction, seed=args.seed)


def _print_version(version, what: str) -> None:
    print(json.dumps({"done": what, "version": version.label, "corrections": version.corrections,
                      "fingerprint": version.fingerprint}))


def cmd_label_issues(args) -> int:
    from engine.dataloop.labels import find_label_issues

    result = find_label_issues(_dataset(args), backbone=args.backbone, image_size=args.image_size)
    records = result.records()
    if args.out:  # the Dataset page's background task
        from engine.workspace import write_json_atomic

        write_json_atomic(args.out, {"fingerprint": result.fingerprint, "checked": result.checked,
                                     "seconds": result.seconds, "classes": result.classes, "issues": records})
        return 0
    if args.json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
        return 0
    print(f"{len(records)} suspected label issue(s) among {result.checked} images "
          f"(dataset version {result.fingerprint}, {result.seconds:.1f} s); worst first:")
    for r in records:
        print(f"  {r['score']:.3f}  {r['path']}  given {r['label']}, suggested {r['suggested']}  ({r['reason']})")
    return 0


def cmd_relabel(args) -> int:
    from engine.dataloop.overlay import relabel

    _print_version(relabel(_dataset(args), args.path, args.label), f"relabel {args.path} -> {args.label}")
    return 0


def cmd_drop(args) -> int:
    from engine.dataloop.overlay import drop

    _print_version(drop(_dataset(args), args.path), f"drop {args.path}")
    return 0


def cmd_undo(args) -> int:
    from engine.dataloop.overlay import undo

    _print_version(undo(_dataset(args)), "undo the last correction")
    return 0


def cmd_corrections(args) -> int:
    from engine.dataloop.overlay import corrections, dataset_version

    dataset = _dataset(args)
    version = dataset_version(dataset)
    print(json.dumps({"version": version.label, "fingerprint": version.fingerprint,
                      "corrections": corrections(dataset)}, ensure_ascii=False, indent=2))
    return 0


def cmd_bench_labels(args) -> int:
    from engine.bench.labels import bench_labels, format_report
    from engine.errors import UserError

    if not 1 <= args.seeds <= 20:
        raise UserError(f"--seeds must be between 1 and 20, got {args.seeds}")
    if not 0.0 < args.fraction < 0.5:
        raise UserError(f"--fraction must be between 0 and 0.5, got {args.fraction}")
    report = bench_labels(args.data, backbone=args.backbone, image_size=args.image_size, fraction=args.fraction,
                          seeds=args.seeds)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _data_options(p) -> None:
    p.add_argument("data", help="built-in name, folder or .zip of class folders")
    p.add_argument("--val-fraction", type=float, default=0.2, help="as given to train (generated splits)")
    p.add_argument("--seed", type=int, default=0, help="split seed, as given to train")


def add_commands(sub, bench_sub) -> None:
    """Register the commands on ``python -m engine``'s subparsers and ``bench labels`` on ``bench``'s."""
    p = sub.add_parser("label-issues", help="suspected label errors (confident learning on the probe's "
                       "out-of-fold probabilities, and duplicates with other labels), worst first")
    _data_options(p)
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--image-size", type=int, help="feature resolution in px (default: the backbone's native size)")
    p.add_argument("--json", action="store_true", help="one JSON line per suspected image")
    p.add_argument("--out", help="(internal) write the issues as one JSON file instead of printing them")
    p.set_defaults(func=cmd_label_issues)

    p = sub.add_parser("relabel", help="correct one image's label (an overlay in the workspace; the file stays)")
    _data_options(p)
    p.add_argument("path", help="the image's path relative to the dataset folder")
    p.add_argument("label", help="one of the dataset's classes")
    p.set_defaults(func=cmd_relabel)

    p = sub.add_parser("drop", help="leave one image out of the dataset (an overlay; the file stays)")
    _data_options(p)
    p.add_argument("path", help="the image's path relative to the dataset folder")
    p.set_defaults(func=cmd_drop)

    p = sub.add_parser("undo", help="take back the dataset's last correction")
    _data_options(p)
    p.set_defaults(func=cmd_undo)

    p = sub.add_parser("corrections", help="the dataset's corrections and its version")
    _data_options(p)
    p.set_defaults(func=cmd_corrections)

    p = bench_sub.add_parser("labels", help="planted label errors: precision/recall of the label check, "
                             "accuracy clean vs noisy vs flagged dropped, seconds")
    p.add_argument("data", nargs="+", help="datasets (built-in names, folders or zips)")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--image-size", type=int, help="default: the backbone's native size")
    p.add_argument("--fraction", type=float, default=0.1, help="share of training labels flipped")
    p.add_argument("--seeds", type=int, default=3, help="draws of the flipped labels (seeds 0..N-1), averaged")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_labels)
