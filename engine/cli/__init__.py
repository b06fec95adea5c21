"""``python -m engine ...``: the same operations the pages offer, for scripts and benchmarks.

One module per command group (each registers its commands with ``add_commands``):
``train`` (train, resume, lr-find, worker, run-job), ``results`` (evaluate, export), ``data`` (inspect,
predict, backbones, add-weights, setup), ``analysis`` (insight, sweep), ``bench``, ``dataloop``
(label-issues, relabel, drop, undo, corrections, bench labels), ``pool`` (suggest, bench active), and
:mod:`engine.hosting.commands` (health, limits, cleanup).

Bad input exits with status 2 and one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from engine.errors import UserError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from engine.cli import analysis, bench, data, dataloop, pool, results, train
    from engine.hosting.commands import add_commands as add_hosting_commands

    parser = argparse.ArgumentParser(prog="python -m engine", description="Transfer Studio engine")
    sub = parser.add_subparsers(dest="command", required=True)
    data.add_commands(sub)
    train.add_commands(sub)
    bench_sub = bench.add_commands(sub)
    results.add_commands(sub)
    analysis.add_commands(sub)
    add_hosting_commands(sub)  # health, limits, cleanup
    dataloop.add_commands(sub, bench_sub)  # label-issues, relabel, drop, undo, corrections, bench labels
    pool.add_commands(sub, bench_sub)  # suggest, bench active
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
