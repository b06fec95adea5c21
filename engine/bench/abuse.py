"""``python -m engine bench abuse``: hostile uploads through the real code paths, each in a child process.

Each case builds its hostile file in a temporary folder at run time (small on disk), then a fresh child
process (``python -m engine.bench.abuse CASE FILE RUN_DIR``) feeds it to the engine call the page makes
and reports its own peak RSS (``VmHWM``) and what the visitor was told. The baseline row is
the same child classifying one small image: the cost of the imports and the model, measured in the
same run. The target: every case under 2 GB peak RSS, answered or refused in words.

The generators are public so the tests feed smaller versions of the same inputs through the same code.
"""
from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

__all__ = ["solid_png", "zip_of_copies", "empty_entries_zip", "zip_bomb", "rle_parquet", "csv_bomb",
           "bench_abuse", "format_report", "TARGET_MB"]

TARGET_MB = 2048


def solid_png(side: int) -> bytes:
    """A ``side`` x ``side`` single-colour PNG: ~100 KB on disk at 6000 px, 108 MB once decoded."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 200)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def zip_of_copies(path: Path, member: bytes, count: int, suffix: str = ".png") -> Path:
    """A zip of ``count`` copies of ``member`` (stored: the members are already compressed)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(f"images/{i:05d}{suffix}", member)
    return path


def empty_entries_zip(path: Path, count: int) -> Path:
    """A valid zip (zip64 end records) of ``count`` empty files, written directly: a million in ~2 s."""
    local = struct.Struct("<4s5H3L2H")
    central = struct.Struct("<4s6H3L5H2L")
    offsets, at = [], 0
    with open(path, "wb") as out:
        for i in range(count):
            name = f"d/{i:08d}.png".encode()
            offsets.append(at)
            record = local.pack(b"PK\x03\x04", 20, 0, 0, 0, 0x21, 0, 0, 0, len(name), 0) + name
            out.write(record)
            at += len(record)
        cd_start = at
        for i, offset in enumerate(offsets):
            name = f"d/{i:08d}.png".encode()
            out.write(central.pack(b"PK\x01\x02", 45, 20, 0, 0, 0, 0x21, 0, 0, 0, len(name), 0, 0, 0, 0,
                                   0o100644 << 16, offset) + name)
            at += central.size + len(name)
        cd_size = at - cd_start
        out.write(struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_start))
        out.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1))
        out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, cd_size, cd_start, 0))
    return path


def zip_bomb(path: Path, unpacked_mb: int, name: str = "images/bomb.png") -> Path:
    """A zip with one deflated entry of ``unpacked_mb`` MB of zeros (about 1000:1)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open(name, "w", force_zip64=True) as entry:
            block = bytes(1024**2)
            for _ in range(unpacked_mb):
                entry.write(block)
    return path


def rle_parquet(path: Path, rows: int) -> Path:
    """A labels table of ``rows`` identical rows: dictionary/RLE-encoded, a few MB for 10^9 rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    chunk = min(rows, 50_000_000)
    zeros = pa.array(np.zeros(chunk, np.int8))
    block = pa.table({"path": pa.DictionaryArray.from_arrays(zeros, ["a.png"]),
                      "label": pa.DictionaryArray.from_arrays(zeros, ["cat"])})
    with pq.ParquetWriter(path, block.schema, compression="zstd") as writer:
        left = rows
        while left > 0:
            writer.write_table(block.slice(0, min(left, chunk)), row_group_size=chunk)
            left -= chunk
    return path


def csv_bomb(path: Path, rows: int, extra_columns: int = 0) -> Path:
    """A labels CSV of ``rows`` tiny rows (10 bytes each) and ``extra_columns`` unused columns."""
    extra = "".join(f",x{i}" for i in range(extra_columns))
    line = ("a.png,cat" + "," * extra_columns + "\n").encode()
    with open(path, "wb") as out:
        out.write(f"path,label{extra}\n".encode())
        block = line * 100_000
        for _ in range(rows // 100_000):
            out.write(block)
        out.write(line * (rows % 100_000))
    return path


# ---------------------------------------------------------------- the child: one case, its peak RSS

def _told_by_predict(result: dict) -> str:
    errors = [e["error"] for e in result["errors"]]
    said = f"{len(result['rows'])} answered"
    return said + (f"; {len(errors)} refused, e.g. {errors[-1]}" if errors else "")


def _memory_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process, MB. Not ``getrusage``'s ru_maxrss: Linux carries that
    over exec from the forked parent, so a child of a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the nearest figure


def _child(case: str, file: Path, run_dir: str) -> dict:
    from engine.errors import UserError

    before = _memory_mb("VmRSS")
    try:
        if case in ("baseline", "predict", "demo", "zip-entries-predict", "zip-bomb-predict"):
            from engine.export.analyse import analyse_images

            budget = "demo" if case == "demo" else "predict"
            told = _told_by_predict(analyse_images(run_dir, [(file.name, file.read_bytes())], budget=budget))
        elif case in ("zip-entries", "zip-bomb"):
            from engine.data.ingest import ingest_zip

            told = f"accepted: {ingest_zip(file)}"
        elif case in ("table-parquet", "table-csv"):
            from engine.data.ingest import ingest_table

            images = file.with_name("images.zip")
            zip_of_copies(images, solid_png(8), 1)
            told = f"accepted: {ingest_table(file, images)}"
        else:
            raise ValueError(f"unknown case {case!r}")
    except UserError as exc:
        told = f"refused: {exc}"
    return {"told": told, "start_mb": round(before, 1), "peak_mb": round(_memory_mb("VmHWM"), 1)}


def _run_child(case: str, file: Path, run_dir: str, env: dict) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "engine.bench.abuse", case, str(file), run_dir],
                          capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"case": case, "told": f"CRASHED (exit {done.returncode}): {tail[0][:200]}", "peak_mb": float("nan"),
                "start_mb": float("nan"), "seconds": round(time.perf_counter() - t0, 1)}
    return {"case": case, **json.loads(done.stdout.strip().splitlines()[-1]),
            "seconds": round(time.perf_counter() - t0, 1)}


def _exported_run(home: Path, progress) -> str:
    """A small exported linear probe to predict with (the bench's own; nothing of the user's is touched)."""
    from engine.bench.health import make_bench_dataset
    from engine.export import export_run
    from engine.runs import new_run
    from engine.training.config import TrainConfig
    from engine.training.runner import train

    data = make_bench_dataset(home / "data", 60, classes=3, max_side=64)
    config = TrainConfig(dataset=str(data), backbone="mobilenet_v2", mode="linear", image_size=64, batch_size=16)
    run = new_run("abuse-bench")
    run.write_config(config.to_dict())
    progress("training and exporting a small model to predict with")
    train(config, run)
    export_run(run.path)
    return str(run.path)


def bench_abuse(images: int = 40, side: int = 6000, entries: int = 1_000_000, parquet_rows: int = 1_000_000_000,
                csv_rows: int = 19_000_000, bomb_mb: int = 1024, run_dir: str | None = None,
                progress=lambda _m: None) -> list[dict]:
    """Every memory case in its own child process: case, what the visitor was told, peak RSS, seconds."""
    from engine.workspace import home as server_home

    with tempfile.TemporaryDirectory(prefix="ts-abuse-") as tmp:
        folder = Path(tmp)
        # The children write (a refused upload writes nothing) into a home of their own, never the user's.
        env = {**os.environ, "TRANSFER_STUDIO_HOME": str(folder / "home")}
        if run_dir is None:
            saved = os.environ.get("TRANSFER_STUDIO_HOME")
            os.environ["TRANSFER_STUDIO_HOME"] = env["TRANSFER_STUDIO_HOME"]
            try:
                run_dir = _exported_run(server_home(), progress)
            finally:
                if saved is None:
                    os.environ.pop("TRANSFER_STUDIO_HOME")
                else:
                    os.environ["TRANSFER_STUDIO_HOME"] = saved
        progress("building the hostile files")
        big = zip_of_copies(folder / "solid-pngs.zip", solid_png(side), images)
        small = folder / "one.png"
        small.write_bytes(solid_png(64))
        cases = [("baseline", small), ("predict", big), ("demo", big),
                 ("zip-entries", empty_entries_zip(folder / "entries.zip", entries)),
                 ("zip-entries-predict", folder / "entries.zip"),
                 ("zip-bomb", zip_bomb(folder / "bomb.zip", bomb_mb)), ("zip-bomb-predict", folder / "bomb.zip"),
                 ("table-parquet", rle_parquet(folder / "labels.parquet", parquet_rows)),
                 ("table-csv", csv_bomb(folder / "labels.csv", csv_rows))]
        rows = []
        for case, file in cases:
            progress(f"{case}: {file.name}, {file.stat().st_size / 1024**2:,.1f} MB on disk")
            row = _run_child(case, file, run_dir, env)
            row["upload_mb"] = round(file.stat().st_size / 1024**2, 1)
            rows.append(row)
    return rows


def format_report(rows: list[dict]) -> str:
    base = next((r["peak_mb"] for r in rows if r["case"] == "baseline"), float("nan"))
    lines = [f"| case | upload MB | peak RSS MB | x baseline | within {TARGET_MB} MB | s | what the visitor was told |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "yes" if r["peak_mb"] <= TARGET_MB and not r["told"].startswith("CRASHED") else "NO"
        told = r["told"].replace("|", "/")[:160]
        lines.append(f"| {r['case']} | {r['upload_mb']:,.1f} | {r['peak_mb']:,.0f} | {r['peak_mb'] / base:.2f} | "
                     f"{ok} | {r['seconds']:.1f} | {told} |")
    return "\n".join(lines)


if __name__ == "__main__":  # the child: python -m engine.bench.abuse CASE FILE RUN_DIR
    print(json.dumps(_child(sys.argv[1], Path(sys.argv[2]), sys.argv[3])))
