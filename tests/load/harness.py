"""Load bench of the hosted profile: N browser sessions against the real app while a fine-tune trains.

Test tooling, not product: ``make bench-load`` (``python -m tests.load [--sessions 8] [--json]``) starts
the real app (``streamlit run streamlit_app.py``, ``TS_PROFILE=hosted``, a temporary ``TRANSFER_STUDIO_HOME``,
a free port) and a
trivial Streamlit app with the same page names, queues one full fine-tune first, then drives N
Playwright contexts of one Debian chromium: each opens the app (a fresh workspace), uploads its own
small digits .zip (its own classes, named after the session), starts a linear probe, watches it
(Runs and Train pages, over and over), predicts one held-out image and downloads the export bundle.

It reports page times (sidebar click until the page's script has finished and its title is drawn)
while a training job runs, p50/p95 for the real and the trivial app measured in the same run and
their ratio; the peak RSS of each server's process tree; the queue's start order against its
submission order; isolation (each session's runs table, upload list, prediction and bundle hold
only its own); and every ``Traceback``/``Error`` line of the server's log.

Playwright is imported inside :func:`load_test` only: the engine never needs it to import.
"""
from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlparse

import numpy as np

__all__ = ["load_test", "format_report", "serve", "start_server", "stop_server", "Server", "free_port", "trivial_app",
           "session_dataset", "PAGE_TITLES", "CHROMIUM", "CHROMIUM_ARGS", "IDLE", "server_log_errors", "tree_rss_mb"]

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
# The real app's navigation (streamlit_app.py); the trivial app gets the same titles.
PAGE_TITLES = ["Dataset", "Backbone", "Train", "Runs", "Insight", "Evaluate", "Predict", "Export"]
# The pages a visitor of the trivial app goes through, as a real session does.
TRIVIAL_ROUND = ["Train", "Runs", "Predict", "Export", "Dataset"]
FINETUNE_WORKSPACE = "10ad7e5710ad7e57"  # the operator's fine-tune (a valid workspace id, no visitor's)
_ERROR_LINE = re.compile(r"Traceback|\w*Error\b|Exception\b")
_TERMINAL = ("done", "failed", "cancelled", "interrupted")


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A ``streamlit run`` process (leader of its own process group) and where to reach it."""

    proc: subprocess.Popen
    url: str
    log: Path


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"streamlit did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


def stop_server(server: Server) -> None:
    """SIGTERM the server's process group (SIGKILL after 15 s). Detached jobs live in groups of their own."""
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


def start_server(script: Path, env: dict[str, str], log: Path, port: int | None = None,
                 timeout: float = 120) -> Server:
    """``streamlit run script`` headless on ``port`` (a free one by default), answering its health check."""
    port = port or free_port()
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        _wait_healthy(proc, server.url, log, timeout)
    except BaseException:
        stop_server(server)
        raise
    return server


@contextmanager
def serve(script: Path, env: dict[str, str], log: Path, timeout: float = 120,
          port: int | None = None) -> Iterator[Server]:
    """A server for the block, stopped after it."""
    server = start_server(script, env, log, port=port, timeout=timeout)
    try:
        yield server
    finally:
        stop_server(server)


def trivial_app(folder: Path, titles: list[str] = PAGE_TITLES) -> Path:
    """A generated Streamlit app with ``titles`` as its pages (st.navigation), each a title and a few widgets."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "trivial_app.py"
    script.write_text(f'''"""Trivial app of the load bench: the same page names, a few widgets each."""
import streamlit as st

st.set_page_config(page_title="Trivial", layout="wide")


def make(title):
    def page():
        st.title(title)
        st.caption("A trivial page: the baseline of the load bench.")
        left, right = st.columns(2)
        left.selectbox("Pick one", ["a", "b", "c"], key=title + "-pick")
        right.slider("A value", 0, 10, 5, key=title + "-value")
        st.button("Press", key=title + "-press")
        st.dataframe({{"x": [1, 2, 3], "y": [4, 5, 6]}})
    return page


pages = [st.Page(make(t), title=t, url_path=t.lower(), default=i == 0) for i, t in enumerate({titles!r})]
page = st.navigation(pages)
with st.sidebar:
    st.markdown("### Trivial")
page.run()
''')
    return script


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """RSS in MB of ``pid`` alone and of it with every descendant (training jobs the server started included)."""
    kids, total, todo = _children(), 0, [pid]
    while todo:
        p = todo.pop()
        total += _rss_kb(p)
        todo.extend(kids.get(p, []))
    return _rss_kb(pid) / 1024, total / 1024


class _RssSampler(threading.Thread):
    """Peak RSS of processes (alone and with their trees), sampled every ``every`` s; ``pids`` gives each
    name's current pid (None while there is none)."""

    def __init__(self, pids: dict[str, Callable[[], int | None]], every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pids, self.every = pids, every
        self.peak = {name: [0.0, 0.0] for name in pids}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for name, find in self.pids.items():
                pid = find()
                if pid:
                    alone, tree = tree_rss_mb(pid)
                    self.peak[name] = [max(self.peak[name][0], alone), max(self.peak[name][1], tree)]
            self._halt.wait(self.every)

    def stop(self) -> dict[str, dict[str, float]]:
        self._halt.set()
        self.join(5)
        return {name: {"process_mb": round(a, 1), "tree_mb": round(t, 1)} for name, (a, t) in self.peak.items()}


def _dispatcher_pid(home: Path) -> int | None:
    text = (home / "dispatcher.pid").read_text().strip() if (home / "dispatcher.pid").is_file() else ""
    return int(text) if text.isdigit() and Path(f"/proc/{text}").exists() else None


def server_log_errors(log: Path) -> list[str]:
    """Lines of a server log that look like an error (a traceback, an ``...Error``, an exception)."""
    if not log.is_file():
        return []
    return [line for line in log.read_text(errors="replace").splitlines() if _ERROR_LINE.search(line)]


# --------------------------------------------------------------------------- data


@dataclass
class SessionData:
    """One session's upload: its own classes (named after the session), a .zip and a held-out image."""

    name: str
    classes: list[str]
    zip_path: Path
    probe_image: Path
    probe_label: str


def session_dataset(index: int, folder: Path, classes: int = 3, per_class: int = 10) -> SessionData:
    """scikit-learn digits, ``classes`` digits chosen by ``index`` (other images per session), as
    ``s<index>-d<digit>/*.png`` in a .zip, plus one image of its first class kept out of the .zip."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    chosen = [(index + k * 3) % 10 for k in range(classes)]
    name = f"load-s{index}"
    root = folder / name
    names = []
    for k, digit in enumerate(chosen):
        label = f"s{index}-d{digit}"
        names.append(label)
        (root / label).mkdir(parents=True, exist_ok=True)
        rows = np.flatnonzero(digits.target == digit)
        start = (index * per_class) % max(1, len(rows) - per_class - 1)
        for j, row in enumerate(rows[start:start + per_class + (1 if k == 0 else 0)]):
            img = Image.fromarray(images[row]).resize((32, 32), Image.Resampling.NEAREST)
            if k == 0 and j == per_class:  # the held-out one
                probe = folder / f"{name}-probe.png"
                img.save(probe)
            else:
                img.save(root / label / f"{row:04d}.png")
    zip_path = Path(shutil.make_archive(str(folder / name), "zip", root))
    return SessionData(name, names, zip_path, probe, names[0])


# --------------------------------------------------------------------------- browser


@dataclass
class Visit:
    app: str
    page: str
    seconds: float
    training: bool
    session: int


@dataclass
class Bench:
    home: Path
    visits: list[Visit] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Visits that hung until the visitor reloaded or clicked again (then drew): counted and shown, not hidden.
    stalls: list[str] = field(default_factory=list)
    timeout_ms: int = 120_000

    def training(self) -> bool:
        """A training job is running (the queue's record)."""
        return _jobs_running(self.home) > 0


@contextmanager
def _in_home(home: Path) -> Iterator[None]:
    """Read the bench's server home (not this process's) through the engine's own API."""
    before = os.environ.get("TRANSFER_STUDIO_HOME")
    os.environ["TRANSFER_STUDIO_HOME"] = str(home)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TRANSFER_STUDIO_HOME", None)
        else:
            os.environ["TRANSFER_STUDIO_HOME"] = before


def _jobs(home: Path) -> list[dict]:
    """The queue's rows (engine.jobs.queue), [] before the server created the queue."""
    from engine.jobs.queue import list_jobs

    if not (home / "jobs.sqlite").is_file():
        return []
    with _in_home(home):
        return list_jobs()


def _jobs_running(home: Path) -> int:
    return sum(job["state"] == "running" for job in _jobs(home))


async def _settle(page, timeout_ms: int) -> None:
    await page.wait_for_timeout(300)  # a rerun may start a moment after the action
    await page.wait_for_selector(IDLE, timeout=timeout_ms)


async def _exceptions(page) -> list[str]:
    found = page.locator("[data-testid='stException']")
    return [await found.nth(i).inner_text() for i in range(await found.count())]


async def _drawn(page, title: str, timeout_ms: int) -> None:
    await page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=timeout_ms)
    await page.wait_for_selector(IDLE, timeout=timeout_ms)


async def _what_is_shown(page) -> str:
    """What a stalled page shows: its address, its headings and the script's state (for the report)."""
    try:
        headings = await page.locator("h1, h2").all_inner_texts()
        state = await page.locator("[data-testid='stApp']").first.get_attribute("data-test-script-state",
                                                                                timeout=2000)
        return f"at {urlparse(page.url).path or '/'}, headings {[h.strip() for h in headings[:3]]}, script {state}"
    except Exception as exc:  # the page may be gone: say so rather than hide the first error
        return f"unreadable: {type(exc).__name__}"


async def _visit(bench: Bench, page, app: str, title: str, session: int) -> float:
    """Click ``title`` in the sidebar; the time until its title is drawn and its script has finished."""
    link = page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=title, exact=True)
    target = urlparse(await link.get_attribute("href") or "").path
    busy = bench.training()
    t0 = time.perf_counter()
    await link.click()
    patience = bench.timeout_ms // 2
    try:
        await _drawn(page, title, patience)
    except Exception:
        seen = await _what_is_shown(page)
        # What a visitor does with a page that hangs: if the address is still another page's, the click was
        # lost (Streamlit drops a sidebar click now and then while a polling fragment runs): click again;
        # otherwise reload once. Either is reported; a page that does not come back after that is a failure.
        lost = urlparse(page.url).path != target
        try:
            if lost:
                await link.click()
            else:
                await page.reload(timeout=bench.timeout_ms)
            await _drawn(page, title, bench.timeout_ms)
        except Exception as exc:
            raise TimeoutError(f"the {title} page was not drawn and idle within {patience / 1000:.0f} s ({seen}), "
                               f"nor {bench.timeout_ms / 1000:.0f} s after a {'second click' if lost else 'reload'} "
                               f"({await _what_is_shown(page)})") from exc
        bench.stalls.append(f"{app} session {session} {title}: not drawn and idle within {patience / 1000:.0f} s "
                            f"({seen}), drawn after a {'second click (the first was lost)' if lost else 'reload'}")
    seconds = time.perf_counter() - t0
    bench.visits.append(Visit(app, title, seconds, busy or bench.training(), session))
    for text in await _exceptions(page):
        bench.errors.append(f"{app} session {session} {title}: exception on the page: {text[:300]}")
    return seconds


async def _download(page, button_name: str, timeout_ms: int) -> bytes:
    async with page.expect_download(timeout=timeout_ms) as info:
        await page.get_by_role("button", name=button_name).first.click()
    download = await info.value
    return Path(await download.path()).read_bytes()


async def _trivial_session(bench: Bench, browser, url: str, index: int, rounds: int) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(bench.timeout_ms)  # Playwright's 30 s is short for 8 sessions on 2 busy cores
    try:
        page = await context.new_page()
        await page.goto(url, timeout=bench.timeout_ms)
        await page.get_by_role("heading", name="Dataset", exact=True).first.wait_for(timeout=bench.timeout_ms)
        await page.wait_for_selector(IDLE, timeout=bench.timeout_ms)
        for _ in range(rounds):
            for title in TRIVIAL_ROUND:
                await _visit(bench, page, "trivial", title, index)
    except Exception as exc:  # one line per failed session in the report
        bench.errors.append(f"trivial session {index}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    finally:
        await context.close()


async def _real_session(bench: Bench, browser, url: str, index: int, data: SessionData, probe_size: int,
                        think_s: float, run_timeout_s: float) -> dict:
    """One visitor, start to end; what it saw, for the isolation and correctness checks."""
    from engine.hosting.workspaces import workspace_for_token
    from engine.runs import Run
    from engine.workflow import run_settled

    out: dict = {"session": index, "classes": data.classes, "ok": False}
    t = bench.timeout_ms
    context = await browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(t)
    try:
        page = await context.new_page()
        out["step"] = "open the app"
        await page.goto(url, timeout=t)
        await page.get_by_role("heading", name="Dataset", exact=True).first.wait_for(timeout=t)
        await page.wait_for_selector(IDLE, timeout=t)
        token = parse_qs(urlparse(page.url).query)["ws"][0]
        wid = workspace_for_token(token)
        out["workspace"] = wid[:8]

        out["step"] = "upload"
        # Upload this session's .zip and use it.
        await page.get_by_role("tab", name="Upload .zip").click()
        uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Dataset .zip")
        await uploader.locator("input[type='file']").set_input_files(str(data.zip_path))
        await _settle(page, t)
        await page.get_by_role("button", name="Extract and use").first.click()
        await _settle(page, t)
        # The page draws the upload's name as a heading (the sidebar, drawn before the page, follows on the next rerun).
        await page.get_by_role("heading", name=re.compile(f"^{data.name}-")).first.wait_for(timeout=t)

        out["step"] = "start the probe"
        # Start a linear probe at a small size.
        await _visit(bench, page, "real", "Train", index)
        size = page.get_by_label("Image size (px)", exact=True)
        await size.fill(str(probe_size))
        await size.press("Enter")
        await _settle(page, t)
        await page.get_by_role("button", name="Start training").click()
        await _settle(page, t)
        await page.wait_for_url(re.compile(r"[?&]run="), timeout=t)
        out["submitted"] = time.time()
        run_id = parse_qs(urlparse(page.url).query)["run"][0]
        out["run"] = run_id
        run = Run(bench.home / "workspaces" / wid / "runs" / run_id)

        out["step"] = "watch the run"
        # Watch it: the runs table and the live Train page, as a visitor waiting for a result would.
        deadline = time.time() + run_timeout_s
        # Until the run is settled: "done" comes first, then the evaluation and the export the Predict page needs.
        while not run_settled(run):
            if time.time() > deadline:
                raise TimeoutError(f"run {run_id} did not finish in {run_timeout_s:.0f} s")
            await _visit(bench, page, "real", "Runs", index)
            await asyncio.sleep(think_s)
            await _visit(bench, page, "real", "Train", index)
            await asyncio.sleep(think_s)
        out["state"] = run.status().get("state")
        evaluation = run.evaluation() or {}
        out["accuracy"] = evaluation.get("accuracy")
        out["eval_classes"] = evaluation.get("classes")
        await _visit(bench, page, "real", "Runs", index)
        await _visit(bench, page, "real", "Train", index)
        await page.get_by_text("Evaluation on the").first.wait_for(timeout=t)
        shown = await page.locator("[data-testid='stMetricValue']").first.inner_text()
        out["accuracy_shown"] = shown.strip()

        out["step"] = "isolation checks"
        # Isolation: the runs table (its CSV) and the upload list hold this session's only.
        await _visit(bench, page, "real", "Runs", index)
        table = list(csv.DictReader(io.StringIO((await _download(page, "Download runs (CSV)", t)).decode())))
        out["runs_listed"] = [row["run"] for row in table]
        await _visit(bench, page, "real", "Dataset", index)
        await page.get_by_role("tab", name="Earlier uploads").click()
        box = page.locator("[data-testid='stSelectbox']").filter(has_text="Earlier upload")
        await box.click()
        options = page.locator("[role='option']")
        await options.first.wait_for(timeout=t)
        out["uploads_listed"] = [s.strip() for s in await options.all_inner_texts()]
        await page.keyboard.press("Escape")

        out["step"] = "predict"
        # Predict the held-out image.
        await _visit(bench, page, "real", "Predict", index)
        predictor = page.locator("[data-testid='stFileUploader']").filter(has_text="Images to classify")
        await predictor.locator("input[type='file']").set_input_files(str(data.probe_image))
        await _settle(page, t)
        await page.get_by_text("All predictions").wait_for(timeout=t)
        captions = await page.locator("[data-testid='stCaptionContainer']").all_inner_texts()
        answer = next((c.split(" (")[0].strip() for c in captions if data.probe_image.name in c), None)
        out["predicted"] = answer

        out["step"] = "export bundle"
        # Export: the bundle of the exported run.
        await _visit(bench, page, "real", "Export", index)
        await page.get_by_text("Parity per variant").wait_for(timeout=t)
        bundle = zipfile.ZipFile(io.BytesIO(await _download(page, "Download bundle (.zip)", t)))
        labels = next(n for n in bundle.namelist() if n.endswith("labels.txt"))
        out["bundle_labels"] = bundle.read(labels).decode().split()
        out["ok"] = True
    except Exception as exc:
        out["error"] = (f"{type(exc).__name__} at '{out.get('step')}': "
                        f"{str(exc).splitlines()[0][:300] if str(exc) else ''}")
        bench.errors.append(f"real session {index}: {out['error']}")
    finally:
        await context.close()
    return out


def _check_session(s: dict, others: set[str]) -> list[str]:
    """What is wrong with one session's results (its own classes, its own run, nothing of another's)."""
    problems = []
    mine = set(s["classes"])
    if s.get("state") != "done":
        problems.append(f"run state {s.get('state')}")
    if s.get("eval_classes") is not None and set(s["eval_classes"]) != mine:
        problems.append(f"evaluated classes {s['eval_classes']}")
    if s.get("accuracy") is not None and s.get("accuracy_shown") != f"{s['accuracy']:.3f}":
        problems.append(f"page shows accuracy {s.get('accuracy_shown')}, the run has {s['accuracy']:.3f}")
    if s.get("runs_listed") != [s.get("run")]:
        problems.append(f"runs table lists {s.get('runs_listed')}")
    uploads = s.get("uploads_listed") or []
    if len(uploads) != 1 or not uploads[0].startswith(f"load-s{s['session']}"):
        problems.append(f"upload list {uploads}")
    if s.get("predicted") not in mine:
        problems.append(f"predicted {s.get('predicted')!r}, not one of its classes")
    if set(s.get("bundle_labels") or []) != mine:
        problems.append(f"bundle labels {s.get('bundle_labels')}")
    seen = set(s.get("bundle_labels") or []) | set(s.get("eval_classes") or []) | {str(s.get("predicted"))}
    if seen & others:
        problems.append(f"saw another session's classes {sorted(seen & others)}")
    return problems


# --------------------------------------------------------------------------- the bench


def _queue_finetune(home: Path, env: dict[str, str], data: str, image_size: int, epochs: int) -> Path:
    out = subprocess.run([sys.executable, "-m", "engine", "train", data, "--mode", "full", "--epochs", str(epochs),
                          "--image-size", str(image_size), "--batch-size", "32", "--queue"],
                         cwd=ROOT, env=env | {"TS_WORKSPACE": FINETUNE_WORKSPACE}, capture_output=True, text=True,
                         check=True)
    return Path(out.stdout.strip().split()[-1])


def _queue_order(home: Path) -> list[dict]:
    return [{"job": j["id"], "run": Path(j["run_dir"]).name, "workspace": Path(j["run_dir"]).parent.parent.name[:8],
             "queued": j["created"], "started": j["started"], "finished": j["finished"]} for j in _jobs(home)]


def _stop_workers(home: Path) -> None:
    """Stop the dispatcher and any job still running (the bench leaves no process behind)."""
    from engine.jobs.tasks import kill_group

    pid_file = home / "dispatcher.pid"
    if pid_file.is_file() and pid_file.read_text().strip().isdigit():
        kill_group(int(pid_file.read_text()), signal.SIGKILL)
    for job in _jobs(home):
        if job["state"] == "running" and job["pid"]:
            kill_group(job["pid"], signal.SIGKILL)


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50_s": None, "p95_s": None}
    return {"n": len(values), "p50_s": round(float(np.percentile(values, 50)), 3),
            "p95_s": round(float(np.percentile(values, 95)), 3), "max_s": round(max(values), 3)}


def load_test(sessions: int = 8, probe_image_size: int = 32, finetune_data: str | None = "digits",
              finetune_image_size: int = 64, finetune_epochs: int = 1, trivial_rounds: int = 2,
              think_s: float = 2.0, run_timeout_s: float = 1800, keep: bool = False,
              progress=None) -> dict:
    """Run the load bench; the report as a dict (see :func:`format_report`).

    ``finetune_data`` None fine-tunes on a folder as small as a session's upload (the test suite's size).
    """
    from playwright.async_api import async_playwright

    from engine.runs import Run

    say = progress or (lambda message: None)
    if not Path(CHROMIUM).is_file():
        raise RuntimeError(f"no browser: {CHROMIUM} is not installed (apt-get install chromium)")
    tmp = Path(tempfile.mkdtemp(prefix="ts-load-"))
    home = tmp / "home"
    home.mkdir()
    env = os.environ.copy() | {"TRANSFER_STUDIO_HOME": str(home), "TS_PROFILE": "hosted",
                               "PYTHONUNBUFFERED": "1"}
    for name in ("TS_WORKSPACE", "TS_PASSWORD", "TS_EXECUTOR"):
        env.pop(name, None)
    bench = Bench(home)
    report: dict = {"sessions": sessions, "load_average_start": os.getloadavg(), "cpus": os.cpu_count()}
    servers: list[Server] = []
    try:
        say("building the built-in datasets in a fresh home")
        data = [session_dataset(i, tmp / "data") for i in range(sessions + 1)]
        finetune_data = finetune_data or str(tmp / "data" / data.pop().name)
        for name in ("fashion-mnist", finetune_data):  # the Dataset page's default and the fine-tune's data
            subprocess.run([sys.executable, "-m", "engine", "inspect", name], cwd=ROOT, env=env, check=True,
                           capture_output=True)
        say("starting the real app and the trivial app")
        real = start_server(ROOT / "streamlit_app.py", env, tmp / "real-server.log")
        servers.append(real)
        trivial = start_server(trivial_app(tmp / "trivial"), env, tmp / "trivial-server.log")
        servers.append(trivial)
        sampler = _RssSampler({"real": lambda: real.proc.pid, "trivial": lambda: trivial.proc.pid,
                               "jobs": lambda: _dispatcher_pid(home)})
        sampler.start()
        say(f"queueing the fine-tune ({finetune_data}, {finetune_image_size} px, {finetune_epochs} epoch(s))")
        finetune = Run(_queue_finetune(home, env, finetune_data, finetune_image_size, finetune_epochs))
        deadline = time.time() + 300
        while finetune.status().get("state") != "running" and time.time() < deadline:
            time.sleep(0.5)

        async def drive() -> list[dict]:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    say(f"trivial app: {sessions} sessions, {trivial_rounds} rounds of {len(TRIVIAL_ROUND)} pages")
                    await asyncio.gather(*(_trivial_session(bench, browser, trivial.url, i, trivial_rounds)
                                           for i in range(sessions)))
                    say(f"real app: {sessions} sessions (upload, probe, watch, predict, export)")
                    return list(await asyncio.gather(*(
                        _real_session(bench, browser, real.url, i, data[i], probe_image_size, think_s,
                                      run_timeout_s) for i in range(sessions))))
                finally:
                    await browser.close()

        results = asyncio.run(drive())
        say("waiting for the fine-tune to settle")
        deadline = time.time() + run_timeout_s
        while finetune.status().get("state") not in _TERMINAL and time.time() < deadline:
            time.sleep(1)
        report["finetune"] = {"state": finetune.status().get("state"), "run": finetune.id,
                              "accuracy": (finetune.evaluation() or {}).get("accuracy")}
        report["memory"] = sampler.stop()
    finally:
        for server in servers:
            stop_server(server)
        _stop_workers(home)
    report["load_average_end"] = os.getloadavg()

    classes_of = {s["session"]: set(s["classes"]) for s in results}
    for s in results:
        others = set().union(*(c for i, c in classes_of.items() if i != s["session"]))
        s["problems"] = _check_session(s, others) if s["ok"] else [s.get("error", "did not finish")]
    report["results"] = results
    report["isolation_ok"] = all(not s["problems"] for s in results)

    order = _queue_order(home)
    by_run = {s.get("run"): s["session"] for s in results}
    for job in order:
        job["who"] = "fine-tune" if job["run"] == finetune.id else f"session {by_run.get(job['run'], '?')}"
    started: list[float] = [j["started"] for j in order if j["started"] is not None]
    report["queue"] = order
    report["fair"] = started == sorted(started) and len(started) == len(order) and order[0]["run"] == finetune.id

    visits = [asdict(v) for v in bench.visits]
    pages: dict = {}
    for app in ("real", "trivial"):
        busy = [v["seconds"] for v in visits if v["app"] == app and v["training"]]
        pages[app] = {"while_training": _percentiles(busy),
                      "all": _percentiles([v["seconds"] for v in visits if v["app"] == app])}
        per_page: dict[str, list[float]] = {}
        for v in visits:
            if v["app"] == app and v["training"]:
                per_page.setdefault(v["page"], []).append(v["seconds"])
        pages[app]["per_page"] = {k: _percentiles(vals) for k, vals in sorted(per_page.items())}
    real_p95, trivial_p95 = pages["real"]["while_training"]["p95_s"], pages["trivial"]["while_training"]["p95_s"]
    pages["p95_ratio"] = round(real_p95 / trivial_p95, 2) if real_p95 and trivial_p95 else None
    real_p50, trivial_p50 = pages["real"]["while_training"]["p50_s"], pages["trivial"]["while_training"]["p50_s"]
    pages["p50_ratio"] = round(real_p50 / trivial_p50, 2) if real_p50 and trivial_p50 else None
    report["pages"] = pages
    report["server_log_errors"] = server_log_errors(tmp / "real-server.log")
    report["trivial_log_errors"] = server_log_errors(tmp / "trivial-server.log")
    report["browser_errors"] = bench.errors
    report["stalls"] = bench.stalls
    report["passed"] = bool(report["isolation_ok"] and report["fair"] and not report["server_log_errors"]
                            and not bench.errors and report["finetune"]["state"] == "done")
    if keep:
        report["kept"] = str(tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def format_report(report: dict) -> str:
    pages = report["pages"]
    lines = [f"load test: {report['sessions']} sessions on {report['cpus']} CPUs, load average "
             f"{report['load_average_start'][0]:.2f} at the start, {report['load_average_end'][0]:.2f} at the end",
             "", "page time while a training job runs (sidebar click until the page is drawn):",
             f"{'app':<10}{'visits':>8}{'p50 s':>9}{'p95 s':>9}{'max s':>9}"]
    for app in ("real", "trivial"):
        w = pages[app]["while_training"]
        if w["n"]:
            lines.append(f"{app:<10}{w['n']:>8}{w['p50_s']:>9.3f}{w['p95_s']:>9.3f}{w['max_s']:>9.3f}")
        else:
            lines.append(f"{app:<10}{0:>8}")
    lines.append(f"real / trivial: p50 {pages['p50_ratio']}x, p95 {pages['p95_ratio']}x")
    lines += ["", "real app per page (while training):"]
    for name, w in pages["real"]["per_page"].items():
        lines.append(f"  {name:<10}{w['n']:>6}  p50 {w['p50_s']:.3f} s  p95 {w['p95_s']:.3f} s")
    mem = report.get("memory", {})
    for app in ("real", "trivial"):
        if app in mem:
            lines.append(f"peak RSS {app} server: {mem[app]['process_mb']:.0f} MB (its process tree "
                         f"{mem[app]['tree_mb']:.0f} MB)")
    if "jobs" in mem:
        lines.append(f"peak RSS job dispatcher with its training jobs: {mem['jobs']['tree_mb']:.0f} MB")
    lines += ["", f"queue (fair: {report['fair']}): job, who, waited s, ran s"]
    t0 = report["queue"][0]["queued"] if report["queue"] else 0
    for j in report["queue"]:
        waited = (j["started"] - j["queued"]) if j["started"] else float("nan")
        ran = (j["finished"] - j["started"]) if j["started"] and j["finished"] else float("nan")
        lines.append(f"  {j['job']:>3} {j['who']:<11} queued +{j['queued'] - t0:6.1f} s  waited {waited:6.1f}  "
                     f"ran {ran:6.1f}")
    lines += ["", f"sessions (isolation and own results: {report['isolation_ok']}):"]
    for s in report["results"]:
        acc = f"{s['accuracy']:.3f}" if s.get("accuracy") is not None else "—"
        lines.append(f"  {s['session']}: ws {s.get('workspace', '?')} run {s.get('run', '—')} acc {acc} "
                     f"predicted {s.get('predicted')} " + ("ok" if not s["problems"] else "; ".join(s["problems"])))
    lines.append(f"fine-tune: {report['finetune']}")
    lines.append(f"server log error lines: {len(report['server_log_errors'])}")
    lines += [f"  {line[:200]}" for line in report["server_log_errors"][:10]]
    lines.append(f"page stalls recovered by a reload or a second click: {len(report['stalls'])}")
    lines += [f"  {line}" for line in report["stalls"][:10]]
    lines += [f"browser: {e}" for e in report["browser_errors"][:20]]
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)
