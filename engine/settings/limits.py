"""Every limit in one place: one frozen dataclass, read from ``TS_*`` variables or one TOML file.

An operator sets a limit with its environment variable (``TS_MAX_EPOCHS=20``) or in the TOML file
named by ``$TS_LIMITS_FILE`` (a ``[limits]`` table whose keys are the field names below); a variable
wins over the file. ``python -m engine limits`` prints the table the README shows. Limits marked
*hosted* apply only on the hosted profile. Each check raises :class:`UserError` with the limit, the
variable that sets it and what the visitor can do.
"""
from __future__ import annotations

import os
import shutil
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from engine.errors import UserError
from engine.settings.profile import hosted
from engine.workspace import home, workspace_id, workspace_root, workspaces_dir

__all__ = ["Limits", "limits", "LIMITS_FILE_ENV", "limit_rows", "check_dataset_upload",
           "check_disk_quota", "check_free_disk",
           "check_room_for_new_workspace", "workspace_usage_bytes", "jobs_at_once", "training_ceilings",
           "check_training_ceilings"]

LIMITS_FILE_ENV = "TS_LIMITS_FILE"


def _limit(default: float, env: str, help: str, hosted_only: bool = False):
    return field(default=default, metadata={"env": env, "help": help, "hosted_only": hosted_only})


@dataclass(frozen=True)
class Limits:
    max_upload_mb: float = _limit(200.0, "TS_MAX_UPLOAD_MB", "largest upload (a dataset .zip or table, a .zip "
                                  "of images to predict), MB; keep `server.maxUploadSize` in "
                                  "`.streamlit/config.toml` the same")
    max_images_per_dataset: int = _limit(50_000, "TS_MAX_IMAGES", "images in one uploaded dataset")
    jobs_per_device: int = _limit(1, "TS_JOBS_PER_DEVICE", "training jobs at once per GPU (or on the CPU when "
                                  "there is none); `TS_MAX_JOBS`, when set, is the server's total instead")
    max_queued_per_workspace: int = _limit(3, "TS_MAX_QUEUED", "training jobs one workspace may have queued or "
                                           "running", hosted_only=True)
    max_epochs: int = _limit(30, "TS_MAX_EPOCHS", "epochs of one training run", hosted_only=True)
    max_image_size: int = _limit(320, "TS_MAX_IMAGE_SIZE", "training image size, px", hosted_only=True)
    disk_quota_mb: float = _limit(2048.0, "TS_DISK_QUOTA_MB", "disk one workspace may fill (uploads, runs, "
                                  "caches), MB", hosted_only=True)
    workspace_ttl_days: float = _limit(14.0, "TS_WORKSPACE_TTL_DAYS", "a workspace unused this long is removed "
                                       "with its files (never a shared run, nor a queued or running one)",
                                       hosted_only=True)
    tasks_at_once: int = _limit(4, "TS_MAX_TASKS", "background tasks (evaluation, export, LR finder, sweep, "
                                "embedding map, insight) running at once on the server")
    tasks_per_workspace: int = _limit(2, "TS_MAX_TASKS_PER_WORKSPACE", "background tasks one workspace may have "
                                      "running at once", hosted_only=True)
    min_free_disk_mb: float = _limit(1024.0, "TS_MIN_FREE_DISK_MB", "free disk under $TRANSFER_STUDIO_HOME "
                                     "below which no job or task starts, MB")
    max_job_hours: float = _limit(12.0, "TS_MAX_JOB_HOURS", "wall-clock time one training job may run before "
                                  "it is stopped, hours")
    max_task_hours: float = _limit(12.0, "TS_MAX_TASK_HOURS", "wall-clock time one background task may run "
                                   "before it is stopped, hours")
    max_workspaces: int = _limit(500, "TS_MAX_WORKSPACES", "workspaces on the server; beyond it a new "
                                 "visitor's first upload, run or task is refused until idle ones are cleaned up",
                                 hosted_only=True)
    max_queued_on_server: int = _limit(50, "TS_MAX_QUEUED_TOTAL", "training jobs queued or running on the "
                                       "server, all workspaces together", hosted_only=True)
    password_attempts: int = _limit(5, "TS_PASSWORD_ATTEMPTS", "wrong passwords one browser session may try "
                                    "before it is refused")
    password_attempts_server: int = _limit(100, "TS_PASSWORD_ATTEMPTS_SERVER", "wrong passwords the whole "
                                           "server takes per 15 minutes before the password form pauses")
    password_delay_s: float = _limit(1.0, "TS_PASSWORD_DELAY_S", "seconds a session waits after a wrong "
                                     "password before its next try, doubling with each wrong one")
    predict_max_files: int = _limit(500, "TS_PREDICT_MAX_FILES", "images one Predict request may classify "
                                    "(files, or members of its zips)")
    predict_max_mb: float = _limit(200.0, "TS_PREDICT_MAX_MB", "bytes one Predict request may unpack and "
                                   "decode (its images, zip members unpacked), MB")
    predict_max_megapixels: float = _limit(400.0, "TS_PREDICT_MAX_MEGAPIXELS", "decoded pixels one Predict "
                                           "request may cost, all its images together, megapixels")
    demo_max_files: int = _limit(4, "TS_DEMO_MAX_FILES", "images one request of the model demo (the anonymous "
                                 "share link) may classify")
    demo_max_mb: float = _limit(20.0, "TS_DEMO_MAX_MB", "bytes one model-demo request may unpack and decode, MB")
    demo_max_megapixels: float = _limit(50.0, "TS_DEMO_MAX_MEGAPIXELS", "decoded pixels one model-demo request "
                                        "may cost, megapixels")
    model_idle_minutes: float = _limit(15.0, "TS_MODEL_IDLE_MINUTES", "a loaded model no session has used this "
                                       "long is released (GPU memory included)")
    decoded_cache_gb: float = _limit(4.0, "TS_DECODED_CACHE_GB", "decoded images one dataset may keep on disk "
                                     "(all its splits at one size), GB; a linear probe over more streams instead")


def _read_file() -> dict:
    name = os.environ.get(LIMITS_FILE_ENV)
    if not name:
        return {}
    try:
        data = tomllib.loads(Path(name).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{LIMITS_FILE_ENV}={name}: cannot read it as TOML ({exc})") from None
    table = data.get("limits", data)
    known = {f.name for f in fields(Limits)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(f"{name}: unknown limit(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return table


def limits() -> Limits:
    """The limits in force now (read each time: cheap, and a changed variable or file applies at once)."""
    from_file = _read_file()
    values: dict = {}
    for f in fields(Limits):
        raw = os.environ.get(f.metadata["env"], "").strip() or from_file.get(f.name)
        if raw is None or raw == "":
            continue
        kind = int if isinstance(f.default, int) else float
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise UserError(f"{f.metadata['env']} (limit {f.name}) must be a number, got {raw!r}") from None
        if value <= 0:
            raise UserError(f"{f.metadata['env']} (limit {f.name}) must be positive, got {raw!r}")
        values[f.name] = value
    return Limits(**values)


def limit_rows(current: Limits | None = None) -> list[dict]:
    """One row per limit: name, variable, default, value now, where it applies, what it bounds."""
    current = current or limits()
    return [{"limit": f.name, "variable": f.metadata["env"], "default": f.default,
             "now": getattr(current, f.name), "applies": "hosted" if f.metadata["hosted_only"] else "always",
             "help": f.metadata["help"]} for f in fields(Limits)]


def training_ceilings(epochs: int, image_size: int) -> tuple[int, int]:
    """Largest epochs and image size a form should offer: the hosted ceilings where they apply and are
    lower, else the caller's own maxima (so a visitor cannot pick what check_can_queue would refuse)."""
    if not hosted():
        return epochs, image_size
    current = limits()
    return min(epochs, int(current.max_epochs)), min(image_size, int(current.max_image_size))


def check_training_ceilings(epochs: int | None, image_size: int | None) -> None:
    """Hosted: refuse epochs or an image size over the server's ceilings (a training job, and the tasks
    that train or extract at a size of their own: LR finder, sweep, insight)."""
    if not hosted():
        return
    cap = limits()
    if epochs is not None and int(epochs) > cap.max_epochs:
        raise UserError(f"{epochs} epochs is over this server's ceiling of {cap.max_epochs} "
                        "(TS_MAX_EPOCHS); choose fewer epochs")
    if image_size is not None and int(image_size) > cap.max_image_size:
        raise UserError(f"image size {image_size} px is over this server's ceiling of "
                        f"{cap.max_image_size} px (TS_MAX_IMAGE_SIZE); choose a smaller size")


def jobs_at_once(devices: int) -> int:
    """Training jobs the dispatcher runs at once: ``TS_MAX_JOBS``, else ``jobs_per_device`` per device."""
    if os.environ.get("TS_MAX_JOBS"):
        try:
            return max(1, int(os.environ["TS_MAX_JOBS"]))
        except ValueError:
            raise UserError(f"TS_MAX_JOBS must be a whole number, got {os.environ['TS_MAX_JOBS']!r}") from None
    return limits().jobs_per_device * max(1, devices)


def workspace_usage_bytes(root: Path | None = None) -> int:
    """Bytes under the workspace root (files only, links not followed)."""
    total = 0
    for folder, _dirs, files in os.walk(root or workspace_root()):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass  # removed while we walked
    return total


def check_disk_quota(adding_bytes: int = 0) -> None:
    """Hosted: refuse when the workspace (plus what is about to be written) is over its quota."""
    if not hosted() or workspace_id() is None:
        return
    check_room_for_new_workspace()
    quota_mb = limits().disk_quota_mb
    used = workspace_usage_bytes()
    if used + adding_bytes > quota_mb * 1024**2:
        more = f" (plus {adding_bytes / 1024**2:,.0f} MB for this one)" if adding_bytes else ""
        raise UserError(f"this workspace uses {used / 1024**2:,.0f} MB{more}, over its {quota_mb:,g} MB disk "
                        "quota (TS_DISK_QUOTA_MB); delete old runs or uploads first")


def check_room_for_new_workspace() -> None:
    """Hosted: the first write of a workspace that has no folder yet is refused when the server already
    holds ``max_workspaces`` (a script opening fresh sessions must not mint disk and queue slots without end)."""
    if not hosted() or workspace_id() is None or workspace_root().is_dir():
        return
    most = limits().max_workspaces
    root = workspaces_dir()
    held = sum(1 for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else 0
    if held >= most:
        raise UserError(f"this server already holds {held:,} workspaces, its limit (TS_MAX_WORKSPACES={most:,}); "
                        "try again later, when idle ones have been cleaned up, or ask the operator")


def check_free_disk() -> None:
    """Refuse new work when the disk under the server root is below its free-space watermark."""
    floor_mb = limits().min_free_disk_mb
    free_mb = shutil.disk_usage(home()).free / 1024**2
    if free_mb < floor_mb:
        raise UserError(f"the server has {free_mb:,.0f} MB of disk free, under its floor of {floor_mb:,g} MB "
                        "(TS_MIN_FREE_DISK_MB); try again later or ask the operator to free space")


def check_dataset_upload(images: int, unpacked_bytes: int = 0) -> None:
    """An uploaded dataset of ``images`` images that unpacks to ``unpacked_bytes``: within the limits?"""
    most = limits().max_images_per_dataset
    if images > most:
        raise UserError(f"the upload holds {images:,} images, over the limit of {most:,} per dataset "
                        "(TS_MAX_IMAGES); upload a sample of it")
    check_disk_quota(unpacked_bytes)
