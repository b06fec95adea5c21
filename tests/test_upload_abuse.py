"""Issue 17, points 1-4 and the in-process caches of point 12: hostile uploads through the real code paths
(the engine calls the pages make), with smaller versions of the inputs `python -m engine bench abuse` uses."""
from __future__ import annotations

import io
import zipfile

import pytest
from PIL import Image

from engine.bench.abuse import csv_bomb, empty_entries_zip, rle_parquet, solid_png, zip_bomb, zip_of_copies
from engine.data.images import ImageProblem, inspect_file, load_rgb
from engine.data.ingest import ingest_table, ingest_zip
from engine.data.tables import MAX_TABLE_ROWS, read_table
from engine.data.zipsafe import ZipLimits, safe_extract
from engine.errors import UserError
from engine.idle_cache import IdleCache
from engine.workspace import datasets_dir


def _png(size: int = 32, colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 30)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _nothing_new_in_datasets(before: set[str]) -> None:
    after = {p.name for p in datasets_dir().iterdir()} if datasets_dir().is_dir() else set()
    assert after <= before | {".uploads"}, after - before


def _datasets() -> set[str]:
    return {p.name for p in datasets_dir().iterdir()} if datasets_dir().is_dir() else set()


# ---------------------------------------------------------------- point 1: predict and the model demo

@pytest.fixture()
def strict_predict(monkeypatch):
    """A small per-request pixel budget, so a handful of 1500 px PNGs stand in for 40 of 6000 px."""
    monkeypatch.setenv("TS_PREDICT_MAX_MEGAPIXELS", "5")
    monkeypatch.setenv("TS_PREDICT_MAX_FILES", "50")


def test_zip_of_huge_solid_pngs_stops_at_the_pixel_budget_and_keeps_only_thumbnails(trained_run, strict_predict,
                                                                                      tmp_path):
    from engine.export.analyse import GALLERY_PX, analyse_images

    archive = zip_of_copies(tmp_path / "solid.zip", solid_png(1500), 12)
    result = analyse_images(trained_run.path, [("solid.zip", archive.read_bytes())])
    # 2.25 MP each, 5 MP budget: the third image takes it past, the rest are never decoded.
    assert len(result["rows"]) == 3
    request = [e for e in result["errors"] if e.get("request")]
    assert len(request) == 1 and "megapixels" in request[0]["error"] and "TS_PREDICT_MAX_MEGAPIXELS" in \
        request[0]["error"]
    assert all(max(img.size) <= GALLERY_PX for img in result["images"].values())


def test_demo_budget_is_stricter_than_predict(trained_run):
    from engine.export.analyse import analyse_images

    files = [(f"img{i}.png", _png(40, (20 * i, 90, 90))) for i in range(7)]
    demo = analyse_images(trained_run.path, files, budget="demo")
    predict = analyse_images(trained_run.path, files, budget="predict")
    assert len(predict["rows"]) == 7 and not predict["errors"]
    assert len(demo["rows"]) == 4  # TS_DEMO_MAX_FILES
    assert any(e.get("request") and "TS_DEMO_MAX_FILES" in e["error"] for e in demo["errors"])


def test_moving_the_threshold_reuses_the_batch_without_decoding_again(trained_run):
    from engine.export.analyse import UNSURE, analyse_images

    files = [(f"c{i}.png", _png(48, (200, 30 * i, 40))) for i in range(3)]
    first = analyse_images(trained_run.path, files, threshold=0.0)
    again = analyse_images(trained_run.path, files, threshold=1.01)
    assert all(again["images"][n] is first["images"][n] for n in first["images"])  # the same thumbnails
    assert all(r["answer"] == UNSURE for r in again["rows"])
    assert all(r["answer"] == r["prediction"] for r in first["rows"])


def test_predict_zip_refuses_a_zip_bomb_member_and_a_million_entry_style_zip(trained_run, tmp_path):
    from engine.export.analyse import analyse_images

    bomb = zip_bomb(tmp_path / "bomb.zip", 8)
    entries = empty_entries_zip(tmp_path / "entries.zip", ZipLimits.max_entries + 10)
    result = analyse_images(trained_run.path, [("bomb.zip", bomb.read_bytes()),
                                               ("entries.zip", entries.read_bytes()), ("ok.png", _png())])
    assert [r["file"] for r in result["rows"]] == ["ok.png"]
    said = {e["file"]: e["error"] for e in result["errors"]}
    assert "zip bomb" in said["bomb.zip/images/bomb.png"]
    assert "entries, over the limit" in said["entries.zip"]


def test_large_jpeg_decodes_at_the_draft_scale_the_model_needs():
    photo = _jpeg(4000, 3000)
    drafted = load_rgb(io.BytesIO(photo), draft_size=448)
    assert drafted.size == (1000, 750)  # 1/4: the smallest DCT scale keeping 448 px on the short side
    assert load_rgb(io.BytesIO(photo)).size == (4000, 3000)


# ---------------------------------------------------------------- point 2: tables

def test_rle_parquet_of_millions_of_rows_is_refused_from_its_footer(tmp_path):
    table = rle_parquet(tmp_path / "labels.parquet", MAX_TABLE_ROWS * 3)
    assert table.stat().st_size < 1024**2  # a few kB on disk, 3 million rows once decoded
    images = zip_of_copies(tmp_path / "images.zip", _png(8), 1)
    before = _datasets()
    with pytest.raises(UserError, match=r"3,000,000 rows, over the limit"):
        ingest_table(table, images)
    _nothing_new_in_datasets(before)


def test_csv_table_bomb_is_refused_and_only_needed_columns_are_read(tmp_path):
    with pytest.raises(UserError, match="over 1,000,000 rows"):
        read_table(csv_bomb(tmp_path / "labels.csv", MAX_TABLE_ROWS + 5))
    wide = read_table(csv_bomb(tmp_path / "wide.csv", 10, extra_columns=2000))
    assert list(wide.columns) == ["path", "label"] and len(wide) == 10


# ---------------------------------------------------------------- point 3: zips

def test_zip_with_too_many_entries_is_refused_from_its_end_record(tmp_path):
    archive = empty_entries_zip(tmp_path / "entries.zip", ZipLimits.max_entries + 1)
    before = _datasets()
    with pytest.raises(UserError, match=r"50,001 entries, over the limit of 50,000"):
        ingest_zip(archive)
    _nothing_new_in_datasets(before)
    small = empty_entries_zip(tmp_path / "small.zip", 70_000)  # zip64 end records, read back by zipfile
    with zipfile.ZipFile(small) as z:
        assert len(z.infolist()) == 70_000


def test_zip_bomb_entry_is_refused_by_its_ratio(tmp_path):
    with pytest.raises(UserError, match="zip bomb"):
        safe_extract(zip_bomb(tmp_path / "bomb.zip", 4), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_name_clash_and_over_long_names_are_one_line_each_and_nothing_is_written(tmp_path):
    clash = _zip(tmp_path / "clash.zip", {"cat/a": _png(), "cat/a/b.png": _png()})
    with pytest.raises(UserError, match="both a file and a folder"):
        safe_extract(clash, tmp_path / "out")
    long_name = _zip(tmp_path / "long.zip", {f"cat/{'x' * 300}.png": _png()})
    with pytest.raises(UserError, match="name is too long"):
        safe_extract(long_name, tmp_path / "out")
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(_zip(tmp_path / "good.zip", {"cat/a.png": _png()}).read_bytes().replace(b"PK\x01\x02",
                                                                                                 b"XX\x01\x02"))
    with pytest.raises(UserError, match="damaged"):
        safe_extract(damaged, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# ---------------------------------------------------------------- point 4: image formats

def test_formats_outside_the_allow_list_are_refused_everywhere(tmp_path):
    pcx = tmp_path / "photo.png"  # a PCX named .png: PIL would decode it without formats=
    Image.new("RGB", (16, 16), (1, 2, 3)).save(pcx, "PCX")
    eps_like = tmp_path / "vector.jpg"
    eps_like.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    for path in (pcx, eps_like):
        with pytest.raises(ImageProblem, match="unsupported format"):
            load_rgb(path)
        assert "unsupported format" in inspect_file(path)["status"]


def test_bundle_predict_opens_only_the_allowed_formats(tmp_path):
    import importlib.util

    from engine.export import bundle_predict

    spec = importlib.util.spec_from_file_location("bundle_predict_copy", bundle_predict.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pcx = tmp_path / "photo.png"
    Image.new("RGB", (16, 16)).save(pcx, "PCX")
    with pytest.raises(Exception) as caught:
        module.load_rgb(pcx)
    assert "cannot identify image file" in str(caught.value)
    assert module.load_rgb(_save_png(tmp_path)).size == (20, 20)


def _save_png(folder):
    path = folder / "ok.png"
    path.write_bytes(_png(20))
    return path


# ---------------------------------------------------------------- point 12: bounded in-process caches

def test_idle_cache_bounds_entries_and_makes_outside_its_lock():
    made: list[str] = []
    cache: IdleCache[str] = IdleCache(lambda: 3600.0, max_entries=2)

    def make(key: str) -> str:
        # A make that reads the cache would deadlock if make() ran under the lock.
        assert len(cache) <= 2
        cache.keys()
        made.append(key)
        return key.upper()

    for key in ("a", "b", "c", "a"):
        assert cache.get(key, 1, lambda k=key: make(k)) == key.upper()
    assert len(cache) == 2 and made == ["a", "b", "c", "a"]  # "a" was evicted by "c", made again

