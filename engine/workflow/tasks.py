"""The background tasks the pages start and follow: evaluation, export, LR finder, sweep, embedding map, insight.

Each is a ``python -m engine ...`` process started through :mod:`engine.jobs.tasks` (limits, register,
a folder any server process can read). The modules below keep the work itself (``evaluate_run``,
``export_run``, ``find_lr``, ``run_sweep``, ``embedding_map``, ``compute_insight``) and where its folder is;
starting and following it is the workflow's, so no lower layer reaches up into the job machinery.
Every ``*_state`` returns the task's state (``running`` | ``done`` | ``failed`` | ``cancelled``, with
``error``) or None when none was started, plus the result once there is one where a page needs it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from engine.errors import UserError
from engine.jobs.tasks import cancel_task, start_task, task_state
from engine.runs import Run
from engine.settings.limits import check_training_ceilings
from engine.workspace import read_json, write_json_atomic

__all__ = ["start_evaluation", "evaluation_state", "start_export_job", "export_job_state", "export_progress",
           "EXPORT_LOG", "start_lr_find", "lr_find_state", "start_sweep", "sweep_status", "cancel_sweep",
           "start_embedding_map", "embedding_status", "start_insight", "insight_state", "RESULT"]

RESULT = "result.json"  # what a task that returns data writes, atomically, when it succeeds
EXPORT_LOG = "export.log"


# ---------------------------------------------------------------- evaluation

def start_evaluation(run_dir: Path | str) -> dict:
    """Evaluate the run in a background process (``python -m engine evaluate RUN_DIR --recompute``)."""
    from engine.evaluation import evaluation_dir

    run = Run(run_dir)
    if not run.best_checkpoint.is_file():
        raise UserError(f"run '{run.id}' has no trained weights yet; train it first")
    return start_task(evaluation_dir(run.path), ["evaluate", str(run.path.resolve()), "--recompute", "--quiet"],
                      result_name="evaluation.json")


def evaluation_state(run_dir: Path | str) -> dict | None:
    """The background evaluation's state, or None if none was started."""
    from engine.evaluation import evaluation_dir

    return task_state(evaluation_dir(run_dir), "evaluation.json")


# ---------------------------------------------------------------- export

def export_job_state(run_dir: Path | str) -> dict | None:
    """The run's export task (folder ``RUN_DIR/export/``): its state and ``variants``; None when none was started."""
    return task_state(Run(run_dir).export_dir, None, log_name=EXPORT_LOG)


def start_export_job(run_dir: Path | str, variants: list[str]) -> dict:
    """Start ``python -m engine export RUN_DIR --variants ...`` detached; refuse a second one for the run.

    An export of a 224 px model with every variant takes about a minute on 2 cores: too long for a page."""
    from engine.export.variants import check_variants

    run = Run(run_dir)
    variants = check_variants(variants)  # unknown names fail here, not in the child
    if not run.best_checkpoint.is_file():
        raise UserError(f"run '{run.id}' has no trained weights yet; train it first")
    state = export_job_state(run.path)
    if state and state.get("state") == "running":
        raise UserError("an export of this run is already running; wait for it to finish")
    return start_task(run.export_dir, ["export", str(run.path), "--variants", ",".join(variants)], None,
                      log_name=EXPORT_LOG, info={"variants": variants})


def export_progress(run_dir: Path | str) -> str:
    """The export task's latest step (its last ``[export]`` log line), or '' before the first."""
    log = Run(run_dir).export_dir / EXPORT_LOG
    steps = [line for line in (log.read_text(errors="replace").splitlines() if log.is_file() else [])
             if line.startswith("[export] ")]
    return steps[-1][len("[export] "):] if steps else ""


def _start_with_inputs(folder: Path, argv: list[str], inputs: dict[str, dict], **kwargs) -> dict:
    """``start_task`` for a task whose input files go in its folder first: a start the limits refuse leaves
    no folder behind when this call made it (the refusal comes after the inputs are written)."""
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in inputs.items():
            write_json_atomic(folder / name, data)
        return start_task(folder, argv, **kwargs)
    except UserError:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
        raise


# ---------------------------------------------------------------- LR finder

def start_lr_find(config, steps: int = 100) -> tuple[Path, dict]:
    """Run the LR range test for a :class:`TrainConfig` in its own process (pages must not train)."""
    from engine.training.lr_finder import lr_find_folder

    check_training_ceilings(None, config.image_size)  # it trains at the form's size: the hosted ceiling holds
    folder = lr_find_folder(config)
    argv = ["lr-find", "--config", str(folder / "config.json"), "--steps", str(steps), "--out", str(folder / RESULT)]
    return folder, _start_with_inputs(folder, argv, {"config.json": config.to_dict()})


def lr_find_state(config) -> tuple[dict | None, dict | None]:
    """The LR finder task of these settings (None if none was started) and its curve once it is done."""
    from engine.training.lr_finder import lr_find_folder

    folder = lr_find_folder(config)
    task = task_state(folder)
    result = read_json(folder / RESULT) if task and task.get("state") == "done" else None
    return task, result


# ---------------------------------------------------------------- backbone sweep

def start_sweep(data: str, backbones: list[str], image_size: int = 224) -> tuple[Path, dict]:
    """Check, then run the sweep as a background task (``python -m engine sweep``); poll :func:`sweep_status`."""
    from engine.sweep.sweep import check_backbones, latest_sweep_file, sweep_folder

    names = check_backbones(backbones)
    check_training_ceilings(None, image_size)
    folder = sweep_folder(data, names, image_size)
    argv = ["sweep", str(data), "--backbones", ",".join(names), "--image-size", str(int(image_size)),
            "--out", str(folder / RESULT), "--progress-file", str(folder / "progress.json"), "--quiet"]
    (folder / "progress.json").unlink(missing_ok=True)
    task = start_task(folder, argv, info={"data": str(data), "backbones": names, "image_size": int(image_size)})
    write_json_atomic(latest_sweep_file(data), {"folder": str(folder)})
    return folder, task


def sweep_status(folder: Path) -> dict:
    """``{"state", "error", "progress": {backbone: {done, total, stage}}, "result"}`` of the sweep in ``folder``."""
    task = task_state(folder) or {}
    return {"state": task.get("state"), "error": task.get("error"), "task": task,
            "progress": read_json(folder / "progress.json") or {},
            "result": read_json(folder / RESULT) if task.get("state") == "done" else None}


def cancel_sweep(folder: Path) -> bool:
    return cancel_task(folder)


# ---------------------------------------------------------------- embedding map

def start_embedding_map(spec: str, dataset, method: str = "pca", max_images: int | None = None) -> dict:
    """Compute the map of ``dataset`` (loaded from ``spec``) in a background process; poll :func:`embedding_status`."""
    from engine.features.embedding import MAX_EMBED_IMAGES, METHODS, POINTS_FILE, embedding_folder

    max_images = MAX_EMBED_IMAGES if max_images is None else max_images
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    argv = ["inspect", str(spec), "--val-fraction", str(dataset.val_fraction), "--embedding",
            "--embedding-max", str(max_images), "--embedding-method", method]
    return start_task(embedding_folder(dataset, method, max_images, dataset.seed), argv, POINTS_FILE)


def embedding_status(dataset, method: str = "pca",
                     max_images: int | None = None) -> tuple[dict | None, pd.DataFrame | None]:
    """The background task's state (None if none was started) and the map's points once they exist."""
    from engine.features.embedding import MAX_EMBED_IMAGES, POINTS_FILE, embedding_folder

    max_images = MAX_EMBED_IMAGES if max_images is None else max_images
    folder = embedding_folder(dataset, method, max_images, dataset.seed)
    state = task_state(folder, POINTS_FILE)
    try:
        points = pd.read_parquet(folder / POINTS_FILE) if (folder / POINTS_FILE).is_file() else None
    except Exception:  # damaged: compute it again
        points = None
    return state, points


# ---------------------------------------------------------------- insight

def start_insight(spec: str, backbone: str, image_size: int = 64, scratch: bool = True) -> dict:
    """Compute the insight in its own process (pages must not); poll with :func:`insight_state`."""
    from engine.insight import insight_folder
    from engine.models import valid_backbone

    valid_backbone(backbone)  # a name from the URL or a form: one of the registry's, or one clear line
    check_training_ceilings(None, image_size)  # it trains scratch models at this size
    folder = insight_folder(spec, backbone)
    argv = ["insight", str(spec), "--backbone", backbone, "--image-size", str(image_size), "--quiet",
            "--out", str(folder / RESULT)] + ([] if scratch else ["--no-scratch"])
    return start_task(folder, argv, info={"dataset": str(spec), "backbone": backbone, "image_size": image_size})


def insight_state(spec: str, backbone: str) -> dict | None:
    from engine.insight import insight_folder

    return task_state(insight_folder(spec, backbone))
