"""``train``, ``resume``, ``lr-find`` and the internal ``worker`` / ``run-job``: a run from the command line.

A queued job (``run-job``) is the workflow's (:func:`engine.workflow.run_job`); ``train`` without ``--queue``
trains in this process, for scripts and benchmarks.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

from engine.errors import UserError
from engine.cli.common import add_train_options, config_from_args, print_progress

__all__ = ["add_commands", "cmd_train", "cmd_run_job", "cmd_resume", "cmd_lr_find", "cmd_worker", "cmd_job_runner"]


def cmd_train(args) -> int:
    from engine.models import get_spec
    from engine.runs import Run, new_run
    from engine.training.runner import train

    config = config_from_args(args)
    if args.queue:  # what the Train page does: check, create the run, queue it for a worker
        from engine.workflow import queue_run

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

        shared: list[str | None] = [None]
        dist.broadcast_object_list(shared, src=0)  # rank 0 names the run directory
        train(config, Run(str(shared[0])))
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
    report = train(config, run, callbacks=[print_progress()])
    if args.export:
        from engine.export import export_run

        export_run(run.path)
    print(json.dumps({"run_dir": str(run.path), "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}))
    return 0


def cmd_run_job(args) -> int:
    """What the dispatcher starts: the workflow's job for the run in RUN_DIR (train, done, evaluate, export)."""
    from engine.runs import Run
    from engine.workflow import run_job

    return run_job(Run(args.run_dir), resume=args.resume, callbacks=[print_progress()])


def cmd_resume(args) -> int:
    from engine.runs import Run
    from engine.training.runner import resume

    run = Run(args.run_dir)
    if args.queue:
        from engine.workflow import resume_run

        resume_run(run)
        print(f"queued {run.path} to resume")
        return 0
    report = resume(run, callbacks=[print_progress()])
    print(json.dumps({"run_dir": str(run.path), "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}))
    return 0


def cmd_lr_find(args) -> int:
    from engine.models import get_spec
    from engine.training.lr_finder import find_lr
    from engine.workspace import write_json_atomic

    config = config_from_args(args)
    get_spec(config.backbone)
    result = find_lr(config, steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr)
    out = Path(args.out) if args.out else Path(f"lr-find-{config.backbone}-{config.mode}.json")
    write_json_atomic(out, result)
    print(f"suggested lr {result['suggested_lr']:.2e} (steepest descent {result['steepest']:.2e}, "
          f"min-loss/10 {result['min_div10']:.2e}) over {result['steps']} steps; curve written to {out}")
    return 0


def cmd_worker(args) -> int:
    from engine.jobs.queue import dispatch_forever

    idle = args.idle_exit
    if idle is None:
        from engine.settings.limits import limits

        idle = limits().model_idle_minutes * 60 if args.resident else 5.0
    dispatch_forever(idle_exit_s=idle, wait_for_lock=args.wait_lock, resident=args.resident)
    return 0


def cmd_job_runner(args) -> int:
    """A spare job process: import what every job needs now, then run the one job the dispatcher hands over
    on stdin (``{"run_dir", "resume"}``) exactly as ``run-job`` would; end quietly when stdin closes first."""
    import sys

    import torch  # noqa: F401  (the seconds a fresh job process would spend here)
    import torchvision  # noqa: F401  (it imports torch._dynamo: ~8 s on a busy 2-core machine)

    import engine.evaluation  # noqa: F401
    import engine.export  # noqa: F401
    import engine.training.runner  # noqa: F401
    import engine.workflow  # noqa: F401
    from engine.jobs.view import DEFAULT_BACKBONE
    from engine.models import get_spec

    get_spec(DEFAULT_BACKBONE)  # builds the backbone registry

    print(f"job-runner {os.getpid()}: ready", flush=True)  # in spare.log: bench flow waits for it
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    job = json.loads(line)
    # From here on this process is the job: its output goes to the run's log, as a spawned job's does.
    from engine.runs import Run

    with open(Run(job["run_dir"]).log_file, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    from engine.hosting.commands import enter_workspace

    args = argparse.Namespace(command="run-job", run_dir=job["run_dir"], resume=bool(job.get("resume")))
    enter_workspace(args)  # the run's own workspace, as ``main`` does for ``run-job``
    try:
        return cmd_run_job(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def add_commands(sub) -> None:
    """Register ``train``, ``resume``, ``lr-find``, ``worker``, ``run-job``, ``job-runner`` on ``sub``."""
    p = sub.add_parser("train", help="fine-tune a backbone on a dataset")
    add_train_options(p)
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
    add_train_options(p)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=1.0)
    p.add_argument("--out", help="JSON file for the curve (default: lr-find-BACKBONE-MODE.json)")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("worker", help="(internal) drain the job queue")
    p.add_argument("--idle-exit", type=float, default=None,
                   help="seconds with an empty queue before it exits (default 5; resident: the model idle time)")
    p.add_argument("--resident", action="store_true",
                   help="stay (the app's dispatcher) and keep a spare job process warm for the next job")
    p.add_argument("--wait-lock", type=float, default=0.0, help="seconds to wait for a dying dispatcher's lock")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("run-job", help="(internal) run one queued job")
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=cmd_run_job)

    from engine.jobs.executors import SPARE_COMMAND

    p = sub.add_parser(SPARE_COMMAND, help="(internal) a warm job process: imports, then runs the job read from stdin")
    p.set_defaults(func=cmd_job_runner)
