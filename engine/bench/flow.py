"""``bench flow``: the built-in flow as a user meets it, click → result, with and without the resident worker.

Each measurement is a fresh home (``TRANSFER_STUDIO_HOME``: empty queue, no feature or decode cache; the
built-in dataset and the offline weights are set up first, untimed). The "click" is what the Train page's
**Start training** does, :func:`engine.workflow.queue_run` with the page's defaults (linear probe,
``fashion-mnist``, 96 px, batch 32); then the run's ``status.json`` is read every 50 ms, as a page would:

* queue call: the click's own checks (weights, the dataset scan) and the queue row,
* pick-up: click → the job's process starts training (``started_at``),
* training: the job's own ``duration_s`` (features, probe, scoring the best checkpoint),
* click → result: click → ``done`` (the headline figures, per-class table and confusion matrix are written),
* click → everything: click → the follow-up (bootstrap intervals, calibration, OOD reference, ONNX export
  and parity) has ended. Before results-first, this was click → result: the job stayed ``running`` until
  the export had passed, so it is the baseline, measured in the same run.

``cold``: no dispatcher running (the first click after a quiet spell: one starts, then a fresh job process
imports torch). ``resident``: the app's resident dispatcher with its warm spare job process (started when
the app starts; the measurement waits until the spare reports ready).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["bench_flow", "format_table", "MODES"]

MODES = ("cold", "resident")


def _setup(home: Path) -> None:
    env = os.environ | {"TRANSFER_STUDIO_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "engine", "setup"], env=env, check=True, stdout=subprocess.DEVNULL)


def _wait_spare_ready(home: Path, timeout: float = 180.0) -> float:
    """Seconds until the resident dispatcher's spare job process says it is ready."""
    started = time.perf_counter()
    log = home / "spare.log"
    while time.perf_counter() - started < timeout:
        if log.is_file() and "ready" in log.read_text(errors="replace"):
            return time.perf_counter() - started
        time.sleep(0.1)
    raise RuntimeError("the spare job process did not get ready")


def _measure(mode: str, dataset: str, image_size: int, say: Callable[[str], None]) -> dict:
    from engine.jobs.queue import ensure_dispatcher
    from engine.training.config import TrainConfig
    from engine.workflow import queue_run

    with tempfile.TemporaryDirectory(prefix=f"ts-bench-flow-{mode}-") as tmp:
        home = Path(tmp)
        previous = os.environ.get("TRANSFER_STUDIO_HOME")
        os.environ["TRANSFER_STUDIO_HOME"] = str(home)
        try:
            say(f"{mode}: setting up a fresh home")
            _setup(home)
            warm_s = None
            if mode == "resident":
                ensure_dispatcher(resident=True)
                warm_s = _wait_spare_ready(home)
                say(f"{mode}: spare job process ready after {warm_s:.1f} s (before the click; untimed)")
            config = TrainConfig(dataset=dataset, mode="linear", image_size=image_size, batch_size=32)
            import torch  # noqa: F401  (the page server has torch and torchvision imported before any click)
            import torchvision  # noqa: F401

            click = time.time()
            run = queue_run(config)
            queued_s = time.time() - click
            done_s = settled_s = None
            deadline = click + 900
            while time.time() < deadline:
                status = run.status()
                now = time.time() - click
                if status.get("state") in ("failed", "cancelled", "interrupted"):
                    raise RuntimeError(f"the run ended {status.get('state')}: {status.get('error')}")
                if done_s is None and status.get("state") == "done":
                    done_s = now
                follow = status.get("follow_up") or {}
                if done_s is not None and follow.get("state") == "done":
                    settled_s = now
                    break
                time.sleep(0.05)
            status = run.status()
            picked = float(status.get("started_at") or click) - click
            row = {"mode": mode, "queue_call_s": round(queued_s, 2), "pick_up_s": round(picked, 2),
                   "training_s": status.get("duration_s"), "click_to_result_s": round(done_s or float("nan"), 2),
                   "click_to_everything_s": round(settled_s or float("nan"), 2),
                   "follow_up_s": round((settled_s or float("nan")) - (done_s or float("nan")), 2),
                   "spare_ready_s": None if warm_s is None else round(warm_s, 1),
                   "accuracy": (run.evaluation() or {}).get("accuracy"),
                   "export_passed": (status.get("export") or {}).get("passed")}
        finally:
            _stop_dispatcher(home)
            if previous is None:
                os.environ.pop("TRANSFER_STUDIO_HOME", None)
            else:
                os.environ["TRANSFER_STUDIO_HOME"] = previous
    say(str(row))
    return row


def _stop_dispatcher(home: Path) -> None:
    """End the measurement's own dispatcher (and with it its spare), so the next one starts cold."""
    import signal

    from engine.jobs.tasks import kill_group

    pid_file = home / "dispatcher.pid"
    if pid_file.is_file() and pid_file.read_text().strip().isdigit():
        start = (home / "dispatcher.start").read_text().strip() if (home / "dispatcher.start").is_file() else None
        kill_group(int(pid_file.read_text().strip()), signal.SIGTERM, start or None)
        time.sleep(1.0)


def bench_flow(dataset: str = "fashion-mnist", image_size: int = 96, modes=MODES, repeats: int = 1,
               progress: Callable[[str], None] | None = None) -> list[dict]:
    """One row per (mode, repeat); see the module's docstring for what each column measures."""
    say = progress or (lambda m: None)
    return [_measure(mode, dataset, image_size, say) for _ in range(repeats) for mode in modes]


def format_table(rows: list[dict]) -> str:
    lines = [f"{'mode':<9}{'queue call':>11}{'pick-up':>9}{'training':>10}{'click→result':>14}"
             f"{'click→all (before)':>20}{'follow-up':>11}{'accuracy':>10}  export"]
    for r in rows:
        lines.append(f"{r['mode']:<9}{r['queue_call_s']:>10.2f}s{r['pick_up_s']:>8.2f}s"
                     f"{r['training_s'] or float('nan'):>9.2f}s"
                     f"{r['click_to_result_s']:>13.2f}s{r['click_to_everything_s']:>19.2f}s"
                     f"{r['follow_up_s']:>10.2f}s{r['accuracy'] or float('nan'):>10.3f}  "
                     f"{'passed' if r['export_passed'] else r['export_passed']}")
    return "\n".join(lines)
