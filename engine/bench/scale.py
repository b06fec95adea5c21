"""``bench scale``: time, peak memory and cache disk of a linear probe and the health check as the data grows.

Each size is a folder of Fashion-MNIST PNGs (train/ and val/, validation from the
official test split) and each measurement a fresh child process in a workspace of
its own (cold caches), so the figures are what a user's first run costs: wall
seconds, the child's peak RSS (``wait4``'s ``ru_maxrss``) and the bytes its cache
folder holds afterwards. A watchdog kills a child whose RSS passes ``rss_limit_gb``
(this machine is shared) and the row says so. Time per image at each size is
compared with the smallest size measured in the same run.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["SIZES", "bench_scale", "format_table"]

SIZES = (7_000, 21_000, 70_000)
_CLASSES = 10
_VAL_SHARE = 7  # 1 in 7 images is validation: 60k / 10k at the full size


def _folder(workdir: Path, images: int) -> Path:
    from engine.data.builtin import write_fashion_mnist

    folder = workdir / f"fashion-mnist-{images}"
    done = folder / ".complete"
    if not done.is_file():
        val = images // _VAL_SHARE // _CLASSES
        write_fashion_mnist(folder, train_per_class=(images // _CLASSES) - val, val_per_class=val)
        done.write_text("ok")
    return folder


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _measure(command: list[str], workspace: str, rss_limit: float) -> dict:
    """Run ``python -m engine COMMAND`` in ``workspace``; seconds, peak RSS, whether the watchdog killed it."""
    env = os.environ | {"TS_WORKSPACE": workspace}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "engine", *command], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    killed = threading.Event()

    def watch() -> None:
        while child.poll() is None:
            if _rss_bytes(child.pid) > rss_limit:
                killed.set()
                child.kill()
                return
            time.sleep(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    err = child.stderr.read() if child.stderr else ""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    watcher.join()
    seconds = time.perf_counter() - started
    error = None
    if killed.is_set():
        error = f"killed at {rss_limit / 2**30:.1f} GiB RSS"
    elif child.returncode:
        error = (err.strip().splitlines() or ["exit %d" % child.returncode])[-1]
    return {"seconds": round(seconds, 1), "peak_rss_bytes": usage.ru_maxrss * 1024, "error": error}


def bench_scale(sizes=SIZES, workdir: Path | str = "/tmp/ts-bench-scale", image_size: int | None = None,
                rss_limit_gb: float = 6.0, progress: Callable[[str], None] | None = None) -> list[dict]:
    """One row per (size, task): ``train --mode linear`` with CLI defaults, and ``inspect`` (the health check)."""
    from engine.workspace import workspaces_dir

    say = progress or (lambda m: None)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for images in sizes:
        say(f"writing {images} Fashion-MNIST PNGs")
        folder = _folder(workdir, images)
        workspace = hashlib.sha256(f"bench-scale-{images}-{time.time()}".encode()).hexdigest()[:16]
        train = ["train", str(folder), "--mode", "linear", "--out", str(workdir / f"run-{images}-{workspace}")]
        if image_size:
            train += ["--image-size", str(image_size)]
        for task, command in (("health check", ["inspect", str(folder), "--json"]), ("linear probe", train)):
            say(f"{task} on {images} images")
            row = {"images": images, "task": task} | _measure(command, workspace, rss_limit_gb * 2**30)
            row["cache_bytes"] = _folder_bytes(workspaces_dir() / workspace / "cache")
            rows.append(row)
            say(str(row))
    base: dict[str, dict] = {}
    for row in rows:
        first = base.setdefault(row["task"], row)
        per_image = row["seconds"] / row["images"]
        row["time_per_image_vs_smallest"] = round(per_image / (first["seconds"] / first["images"]), 2)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'images':>8} {'task':<13} {'seconds':>8} {'peak RSS':>9} {'cache':>9} {'s/img vs smallest':>18}  note"]
    for r in rows:
        lines.append(f"{r['images']:>8,} {r['task']:<13} {r['seconds']:>8.1f} {r['peak_rss_bytes'] / 2**30:>7.2f}G "
                     f"{r['cache_bytes'] / 2**20:>7.0f}M {r['time_per_image_vs_smallest']:>17.2f}x  "
                     f"{r['error'] or ''}")
    return "\n".join(lines)
