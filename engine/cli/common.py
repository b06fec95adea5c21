"""What the command groups share: JSON output, a background-capable ending, the progress printer, and the
training options generated from :class:`engine.training.config.TrainConfig`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.errors import UserError

__all__ = ["print_json", "report", "print_progress", "config_from_args", "add_train_options", "say"]


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def report(args, result: dict, fmt) -> int:
    """A background-capable command's ending: ``--out FILE`` (JSON), then ``--json``, the text, or ``--quiet``."""
    from engine.workspace import write_json_atomic

    if args.out:
        write_json_atomic(Path(args.out), result)
    if args.json:
        print_json(result)
    elif not args.quiet:
        print(fmt(result))
    return 0


def print_progress():
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


def config_from_args(args):
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


def add_train_options(p) -> None:
    """Options shared by ``train`` and ``lr-find``: one per TrainConfig field, generated from it."""
    from engine.training.config import TrainConfig

    p.add_argument("data", nargs="?", help="built-in name, folder or .zip of class folders")
    p.add_argument("--config", help="a config.json to run as it is (the other options are then ignored)")
    TrainConfig.add_arguments(p, exclude=("dataset",))


def say(prefix: str, quiet: bool = False):
    """A progress printer for ``[prefix] message`` lines on stderr (None when ``quiet``)."""
    if quiet:
        return None
    return lambda message: print(f"[{prefix}] {message}", file=sys.stderr, flush=True)
