"""Shared fixtures: an isolated workspace, small real datasets, one trained run.

Tests use real images (drawn here, or shipped with packages) and the real
engine; the trained run is built once per session and shared.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# A second copy of this module (``from tests.conftest import …``) would draw a second home below and
# move every later test of the process into it, away from the session's fixtures.
if __name__ != "conftest" and "conftest" in sys.modules:
    raise ImportError(f"import the test helpers as `from conftest import ...`, not as {__name__}")

# Isolate every test session from the developer's workspace, before engine imports.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="ts-test-home-"))
os.environ["TRANSFER_STUDIO_HOME"] = str(_SESSION_HOME)
os.environ.setdefault("TS_ORT_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHAPES_CLASSES = ["circle", "square", "triangle"]


# Tests on the trained (and exported) run share fixtures that train and export once per session,
# a minute or two on CPU: they belong to the full suite, not to `make test-fast`.
_TRAINING_FIXTURES = {"trained_run", "exported_variants_run", "bundle_dir"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # Longest files first (`make test` runs one file per worker at a time, in this order, with
    # --no-loadscope-reorder), a file's length guessed from its tests: a browser test takes about a minute,
    # a slow one some seconds. xdist's own order (most tests first) started the one-test, three-minute load
    # test last, and the suite waited for it alone. A file may say its length (``SUITE_SECONDS``) instead.
    weight: dict[str, int] = {}
    for item in items:
        cost = 60 if item.get_closest_marker("e2e") else 6 if item.get_closest_marker("slow") else 1
        weight[str(item.path)] = weight.get(str(item.path), 0) + cost
    for item in items:
        weight[str(item.path)] = max(weight[str(item.path)], getattr(item.module, "SUITE_SECONDS", 0))
    items.sort(key=lambda item: -weight[str(item.path)])  # stable: a file's tests keep their order


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's workspace; stop its job dispatcher first so nothing writes there again."""
    pid_file = _SESSION_HOME / "dispatcher.pid"
    if pid_file.is_file():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
        except (ValueError, ProcessLookupError, PermissionError):
            pass
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _training_is_marked_slow(request):
    """A test that takes an optimizer step in this process trains a model: it must be marked ``slow``
    (``make test-fast`` leaves those out). Counted with torch's global optimizer hook, not by name."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps = [0]
    handle = register_optimizer_step_post_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    try:
        yield
    finally:
        handle.remove()
    if steps[0] and request.node.get_closest_marker("slow") is None:
        pytest.fail(f"{request.node.nodeid} trains a model ({steps[0]} optimizer steps): mark it slow")


@pytest.fixture(autouse=True)
def _workspace_left_as_found(request):
    """Every test leaves the local profile's single workspace current, as it found it.

    A test that left another workspace current (``$TS_WORKSPACE``, an open ``use_workspace``, a
    Streamlit session's resolver on the hosted profile) would send the next test's runs where its
    pages do not look; under pytest-xdist that next test is a different one on every run."""
    yield
    from engine.settings.profile import hosted
    from engine.workspace import workspace_id

    left = {"TS_WORKSPACE": os.environ.get("TS_WORKSPACE"), "TS_PROFILE": os.environ.get("TS_PROFILE"),
            "TRANSFER_STUDIO_HOME": os.environ.get("TRANSFER_STUDIO_HOME")}
    if workspace_id() is not None or hosted() or left["TRANSFER_STUDIO_HOME"] != str(_SESSION_HOME):
        os.environ.pop("TS_WORKSPACE", None)
        os.environ.pop("TS_PROFILE", None)
        os.environ["TRANSFER_STUDIO_HOME"] = str(_SESSION_HOME)
        pytest.fail(f"{request.node.nodeid} left workspace {workspace_id()!r} current: {left}")


def need_browser() -> None:
    """Skip a browser test where no chromium is installed, unless the run asked for the browser
    (``make test`` sets ``TS_BROWSER_REQUIRED=1`` after installing it): then its absence is a failure."""
    from tests.load.harness import CHROMIUM

    if Path(CHROMIUM).is_file():
        return
    message = f"no browser: {CHROMIUM} is not installed (apt-get install chromium, or `make test` does it)"
    if os.environ.get("TS_BROWSER_REQUIRED") == "1":
        pytest.fail(message)
    pytest.skip(message)


def wait_for(predicate, timeout: float = 180, poll: float = 0.2):
    """``predicate()``'s first truthy value, polled every ``poll`` s; AssertionError after ``timeout`` s."""
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("timed out waiting")


def draw_shape(kind: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A coloured shape on a noisy background: easy for a pretrained backbone, not trivial."""
    bg = tuple(int(v) for v in rng.integers(0, 90, 3))
    fg = tuple(int(v) for v in rng.integers(150, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    r = rng.integers(size // 4, size // 2 - 2)
    cx, cy = rng.integers(r + 1, size - r - 1, 2)
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "circle":
        draw.ellipse(box, fill=fg)
    elif kind == "square":
        draw.rectangle(box, fill=fg)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    noise = rng.integers(-12, 13, (size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_shapes_dataset(root: Path, per_class: int = 16, seed: int = 0, splits: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    for kind in SHAPES_CLASSES:
        for i in range(per_class):
            split = ("val" if i % 4 == 0 else "train") if splits else None
            folder = root / split / kind if split else root / kind
            folder.mkdir(parents=True, exist_ok=True)
            draw_shape(kind, rng).save(folder / f"{kind}_{i:03d}.png")
    return root


def queued_run(data, label, **kw):
    """A run directory with a small training config (full fine-tune, 4 epochs at 32 px unless ``kw`` says
    otherwise), ready for ``jobs.submit``."""
    from engine.runs import new_run
    from engine.training.config import TrainConfig

    config = TrainConfig(dataset=str(data), **({"mode": "full", "epochs": 4, "image_size": 32, "batch_size": 8,
                                                "threads": 1} | kw))
    run = new_run(label)
    run.write_config(config.to_dict())
    return run


def job_pid(run):
    """The pid of ``run``'s job while the queue says it is running, else None."""
    from engine.jobs import queue as jobs

    rows = [j for j in jobs.list_jobs() if j["run_dir"] == str(run.path.resolve())]
    return rows[0]["pid"] if rows and rows[0]["state"] == "running" else None


def dispatcher_pid() -> int | None:
    """The pid of this session's live job dispatcher (it writes it once it holds the lock), else None."""
    from engine.jobs.tasks import pid_alive
    from engine.workspace import home

    path = home() / "dispatcher.pid"
    pid = int(path.read_text()) if path.is_file() else None
    return pid if pid_alive(pid) else None


def stop_idle_dispatcher(timeout: float = 120, quiet_s: float = 3.0) -> None:
    """Stop the dispatcher once no job is queued or running, so the next one starts with the caller's settings.

    An earlier test's page started the app's *resident* dispatcher, which stays for the model idle time
    (15 min) and keeps the executor settings it started with; waiting for it to exit on its own fails. One
    that page spawned a moment ago may not hold the lock yet: done once the lock has stayed free ``quiet_s``."""
    import fcntl

    from engine.jobs import queue as jobs
    from engine.jobs.tasks import kill_group
    from engine.workspace import home

    wait_for(lambda: not any(j["state"] in ("queued", "running") for j in jobs.list_jobs()), timeout)
    end, free_since = time.time() + 60, time.time()
    while time.time() - free_since < quiet_s:
        with open(home() / "dispatcher.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(lock, fcntl.LOCK_UN)
            except BlockingIOError:
                free_since = time.time()
                kill_group(dispatcher_pid(), signal.SIGTERM)
        if time.time() > end:
            raise AssertionError(f"a dispatcher still holds {home() / 'dispatcher.lock'} after 60 s")
        time.sleep(0.2)


APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


def open_app(page: str | None = None, timeout: float = 90, **query: str):
    """The whole app (frame + navigation) as a fresh browser session with ``query`` in its URL, run once;
    then ``page`` when given (AppTest runs a switched-to page without the frame)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


@pytest.fixture(scope="session")
def workspace_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """3 classes x 16 drawn shapes, no split folders (the engine splits them)."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def trained_run(shapes_dir):
    """A MobileNetV2 linear probe on the shapes, trained and exported once per session."""
    from engine.export import export_run
    from engine.runs import new_run
    from engine.training.config import TrainConfig
    from engine.training.runner import train

    config = TrainConfig(dataset=str(shapes_dir), backbone="mobilenet_v2", mode="linear",
                         image_size=64, batch_size=16)
    run = new_run("fixture")
    run.write_config(config.to_dict())
    train(config, run)
    export_run(run.path)
    return run


@pytest.fixture(scope="session")
def exported_variants_run(trained_run, tmp_path_factory):
    """A copy of ``trained_run`` (outside runs/) exported to every ONNX variant, once per session."""
    import shutil

    from engine.export import VARIANTS, export_run
    from engine.runs import Run

    copy = Run(shutil.copytree(trained_run.path, tmp_path_factory.mktemp("variants") / trained_run.id))
    export_run(copy.path, variants=VARIANTS)
    return copy
