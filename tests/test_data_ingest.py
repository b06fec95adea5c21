"""Untrusted input: zips, tables, upload limits, dataset names from the URL."""
from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import draw_shape, make_shapes_dataset
from engine.cli import main
from engine.data.dataset import load_dataset
from engine.data.ingest import ingest_table, ingest_zip, validate_spec
from engine.data.zipsafe import ZipLimits, safe_extract
from engine.errors import UserError
from engine.workspace import datasets_dir


def _png(kind="circle", seed=0) -> bytes:
    buf = io.BytesIO()
    draw_shape(kind, np.random.default_rng(seed), size=32).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return path


def _good_entries() -> dict[str, bytes]:
    return {f"{k}/{k}_{i}.png": _png(k, i) for k in ("circle", "square") for i in range(4)}


def _snapshot(*folders: Path) -> set[str]:
    return {str(p) for f in folders for p in Path(f).rglob("*")}


@pytest.mark.parametrize("bad_name, message", [
    ("../evil.png", "leaves its folder"),
    ("circle/../../evil.png", "leaves its folder"),
    ("/etc/evil.png", "absolute path"),
    ("C:/evil.png", "absolute path"),
    ("circle/inner.zip", "another archive"),
])
def test_malicious_zip_entries_are_refused_and_nothing_is_written(tmp_path, bad_name, message):
    upload = _zip(tmp_path / "up.zip", {**_good_entries(), bad_name: b"x"})
    before = _snapshot(tmp_path, datasets_dir())
    with pytest.raises(UserError, match=message):
        ingest_zip(upload)
    assert _snapshot(tmp_path, datasets_dir()) == before
    assert not (tmp_path.parent / "evil.png").exists()


def test_symlink_in_zip_is_refused(tmp_path):
    upload = _zip(tmp_path / "up.zip", _good_entries(), symlinks={"circle/link.png": "/etc/passwd"})
    before = _snapshot(datasets_dir())
    with pytest.raises(UserError, match="symbolic link"):
        ingest_zip(upload)
    assert _snapshot(datasets_dir()) == before


def test_zip_bomb_by_ratio_is_refused_before_extracting(tmp_path):
    upload = _zip(tmp_path / "bomb.zip", {**_good_entries(), "circle/zeros.png": bytes(80 * 1024**2)})
    assert upload.stat().st_size < 1024**2
    before = _snapshot(datasets_dir())
    with pytest.raises(UserError, match="zip bomb"):
        ingest_zip(upload)
    assert _snapshot(datasets_dir()) == before


def test_zip_with_too_many_entries_or_oversized_entries_is_refused(tmp_path):
    class Small(ZipLimits):
        max_entries = 5
        max_entry_bytes = 1000

    upload = _zip(tmp_path / "many.zip", _good_entries())
    with pytest.raises(UserError, match="entries, over the limit"):
        safe_extract(upload, tmp_path / "out", limits=Small)
    assert not (tmp_path / "out").exists()
    Small.max_entries = 100
    big = _zip(tmp_path / "big.zip", {"a/x.png": bytes(5000), "b/y.png": b"1"})
    with pytest.raises(UserError, match="per-file limit"):
        safe_extract(big, tmp_path / "out", limits=Small)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_not_a_zip_and_damaged_zip(tmp_path):
    (tmp_path / "fake.zip").write_text("hello")
    with pytest.raises(UserError, match="not a zip"):
        ingest_zip(tmp_path / "fake.zip")
    good = _zip(tmp_path / "g.zip", _good_entries()).read_bytes()
    (tmp_path / "cut.zip").write_bytes(good[: len(good) - 30])
    with pytest.raises(UserError):
        ingest_zip(tmp_path / "cut.zip")


def test_upload_size_limit_is_checked_before_extraction(tmp_path, monkeypatch, capsys):
    upload = _zip(tmp_path / "up.zip", _good_entries())
    monkeypatch.setenv("TS_MAX_UPLOAD_MB", str(upload.stat().st_size / 1024**2 / 2))
    before = _snapshot(datasets_dir())
    with pytest.raises(UserError, match="upload limit"):
        ingest_zip(upload)
    assert main(["inspect", str(upload)]) == 2
    assert "TS_MAX_UPLOAD_MB" in capsys.readouterr().err
    assert _snapshot(datasets_dir()) == before


def test_good_zip_with_splits_and_unicode_class_names(tmp_path):
    entries = {f"{split}/{label}/{i}.png": _png("circle" if label == "Katze" else "square", i)
               for split in ("train", "val") for label in ("Katze", "猫の写真") for i in range(3)}
    dest = ingest_zip(_zip(tmp_path / "unicode.zip", entries))
    assert dest.parent == datasets_dir()
    dataset = load_dataset(dest)
    assert dataset.classes == sorted(["Katze", "猫の写真"])
    assert dataset.split_source == "folders"
    assert ingest_zip(tmp_path / "unicode.zip") == dest  # same upload, same folder


def _table_upload(tmp_path: Path, rows: list[dict]) -> tuple[Path, Path]:
    images = {f"img/{k}_{i}.png": _png(k, i) for k in ("circle", "square") for i in range(4)}
    images.update({f"img/extra_{i}.png": _png("triangle", i) for i in range(3)})
    table = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table, _zip(tmp_path / "images.zip", images)


def test_csv_rows_outside_the_upload_or_missing_are_listed_not_read(tmp_path):
    rows = [{"path": f"img/{k}_{i}.png", "label": k} for k in ("circle", "square") for i in range(4)]
    rows += [
        {"path": "../../etc/passwd", "label": "circle"},
        {"path": "/etc/passwd", "label": "circle"},
        {"path": "img/missing.png", "label": "circle"},
        {"path": "img/circle_0.png", "label": "square"},  # same file twice
        {"path": "img/extra_0.png", "label": ""},
        {"path": "img/extra_1.png", "label": "a/b"},
        {"path": "img/extra_2.png", "label": "x" * 300},
    ]
    table, images = _table_upload(tmp_path, rows)
    dest = ingest_table(table, images)
    assert (dest / "labels.csv").is_file() and dest.parent == datasets_dir()
    dataset = load_dataset(dest)
    status = dict(zip(dataset.manifest["path"] + "|" + dataset.manifest["label"], dataset.manifest["status"]))
    assert "leaves the dataset folder" in status["../../etc/passwd|circle"]
    assert "leaves the dataset folder" in status["/etc/passwd|circle"]
    assert "does not exist" in status["img/missing.png|circle"]
    assert "more than once" in status["img/circle_0.png|square"]
    assert "empty class name" in status["img/extra_0.png|"]
    assert "path separator" in status["img/extra_1.png|a/b"]
    assert "longer than" in status["img/extra_2.png|" + "x" * 300]
    assert set(dataset.usable["label"]) == {"circle", "square"}
    assert not dataset.usable["path"].str.contains("passwd").any()


def test_csv_with_wrong_columns_is_refused_before_extracting(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("file,class\na.png,cat\n")
    images = _zip(tmp_path / "i.zip", _good_entries())
    before = _snapshot(datasets_dir())
    with pytest.raises(UserError, match="needs columns 'path' and 'label'"):
        ingest_table(table, images)
    assert _snapshot(datasets_dir()) == before


def test_parquet_table_on_a_server_folder_with_splits(tmp_path):
    root = make_shapes_dataset(tmp_path / "srv", per_class=6)
    rows = [{"path": p.relative_to(root).as_posix(), "label": p.parent.name, "split": "val" if i % 3 == 0 else "train"}
            for i, p in enumerate(sorted(root.rglob("*.png")))]
    pd.DataFrame(rows).to_parquet(root / "my_labels.parquet")
    dataset = load_dataset(root / "my_labels.parquet")
    assert dataset.split_source == "table"
    assert len(dataset.usable) == 18 and set(dataset.usable["split"]) == {"train", "val"}


def test_validate_spec_allows_only_builtins_uploads_and_data_roots(tmp_path, monkeypatch):
    assert validate_spec("fashion-mnist") == "fashion-mnist"
    upload = datasets_dir() / "some-upload"
    upload.mkdir(exist_ok=True)
    assert validate_spec(str(upload)) == str(upload.resolve())
    for bad in ("/etc", str(tmp_path), "../../etc", str(datasets_dir()), "", str(datasets_dir() / "nope")):
        with pytest.raises(UserError):
            validate_spec(bad)
    (tmp_path / "served").mkdir()
    link = datasets_dir() / "sneaky"
    if link.is_symlink():
        link.unlink()
    os.symlink(tmp_path / "served", link)
    with pytest.raises(UserError, match="not a built-in"):
        validate_spec(str(link))
    monkeypatch.setenv("TS_DATA_ROOTS", str(tmp_path))
    assert validate_spec(str(tmp_path / "served")) == str((tmp_path / "served").resolve())
    assert validate_spec(str(link)) == str((tmp_path / "served").resolve())  # now inside a data root
    link.unlink()


def test_cli_inspect_json_reports_health_for_a_csv_dataset(tmp_path, capsys):
    rows = [{"path": f"img/{k}_{i}.png", "label": k} for k in ("circle", "square") for i in range(4)]
    rows.append({"path": "../../etc/passwd", "label": "circle"})
    table, images = _table_upload(tmp_path, rows)
    dest = ingest_table(table, images)
    assert main(["inspect", str(dest), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == 8
    assert any("leaves the dataset folder" in r["status"] for r in out["health"]["unreadable"])


def test_a_zip_is_stored_once_whether_uploaded_or_named_on_the_command_line(tmp_path):
    upload = _zip(tmp_path / "stored-once.zip", _good_entries())
    from_cli = load_dataset(upload)
    assert from_cli.root == ingest_zip(upload)  # the same folder, not a second copy
    assert len([p for p in datasets_dir().iterdir() if p.name.startswith("stored-once")]) == 1
