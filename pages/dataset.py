"""Dataset page: bring data in (built-in, .zip, CSV + images, server folder) and check its health.

The chosen validation fraction is kept in ``st.session_state["val_fraction"]``;
the Train page reads it into ``TrainConfig.val_fraction`` so training sees the
same split as this page.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from engine.data.builtin import BUILTIN_DATASETS
from engine.features.embedding import METHODS
from engine.workflow import embedding_status, start_embedding_map
from engine.data.health import health_check
from engine.data.images import ImageProblem, load_rgb
from engine.data.ingest import ingest_table, ingest_zip, server_datasets, uploaded_datasets, uploads_dir
from engine.errors import UserError
from app.state import current_dataset, set_dataset, require_frame
from app.label_review import label_review

require_frame()  # a deep link on a fresh server runs through the frame

GALLERY = 24


def _save_upload(upload, suffix: str) -> Path:
    """The upload as a temp file inside the workspace (never in a shared /tmp)."""
    fd, name = tempfile.mkstemp(dir=uploads_dir(), suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(upload.getbuffer())
    return Path(name)


def _ingest(make, *uploads) -> str | None:
    saved = []
    try:
        for upload in uploads:
            saved.append(_save_upload(upload, Path(upload.name).suffix.lower()))
        return str(make(*saved, name=uploads[0].name))
    except UserError as exc:
        st.error(str(exc))
        return None
    finally:
        for path in saved:
            path.unlink(missing_ok=True)


def _label(spec: str) -> str:
    return spec if spec in BUILTIN_DATASETS else Path(spec).name


def _choose_source(spec: str) -> str:
    built_in, upload_zip, upload_csv, server, previous = st.tabs(
        ["Built-in", "Upload .zip", "Upload CSV + images", "Server folder", "Earlier uploads"])
    with built_in:
        names = list(BUILTIN_DATASETS)
        pick = st.selectbox("Built-in dataset", names, index=names.index(spec) if spec in names else 0,
                            key="builtin_pick")
        st.caption(BUILTIN_DATASETS[pick].description)
        if st.button("Use this dataset", key="use_builtin"):
            spec = pick
    with upload_zip:
        st.caption("A .zip of class folders (class_name/image.jpg), optionally under train/, val/, test/.")
        upload = st.file_uploader("Dataset .zip", type=["zip"], key="zip_upload")
        if upload is not None and st.button("Extract and use", key="use_zip"):
            spec = _ingest(ingest_zip, upload) or spec
    with upload_csv:
        st.caption("A CSV or parquet with columns path,label[,split]; paths are relative to the top of the "
                   "images .zip.")
        table = st.file_uploader("Labels table", type=["csv", "parquet"], key="table_upload")
        images = st.file_uploader("Images .zip", type=["zip"], key="images_upload")
        if table is not None and images is not None and st.button("Extract and use", key="use_table"):
            spec = _ingest(ingest_table, table, images) or spec
    with server:
        found = server_datasets()
        if not found:
            st.info("No server data roots are configured. An operator lists folders in TS_DATA_ROOTS "
                    "(separated by ':'); their datasets then appear here.")
        else:
            pick = st.selectbox("Dataset on the server", found, format_func=lambda p: p, key="server_pick")
            if st.button("Use this folder", key="use_server"):
                spec = pick
    with previous:
        earlier = uploaded_datasets()
        if not earlier:
            st.caption("No uploads yet.")
        else:
            pick = st.selectbox("Earlier upload", earlier, format_func=_label, key="previous_pick")
            if st.button("Use this upload", key="use_previous"):
                spec = pick
    return spec


def _gallery(root: Path, rows: pd.DataFrame, captions: list[str] | None = None) -> None:
    images, texts = [], []
    for i, rel in enumerate(rows["path"].head(GALLERY)):
        try:
            images.append(load_rgb(root / rel))
            texts.append(captions[i] if captions else Path(rel).name)
        except (ImageProblem, OSError):
            continue
    if images:
        st.image(images, caption=texts, width=96)


def _table(frame: pd.DataFrame, name: str, key: str) -> None:
    st.dataframe(frame, hide_index=True, width="stretch")
    st.download_button(f"Download {name} (CSV)", frame.to_csv(index=False).encode(), file_name=f"{name}.csv",
                       mime="text/csv", key=key, on_click="ignore")


st.title("Dataset")
spec = _choose_source(current_dataset())
if spec != current_dataset():
    set_dataset(spec)

val_fraction = st.slider("Validation fraction (used when the data has no train/val split)", 0.05, 0.5,
                         float(st.session_state.get("val_fraction", 0.2)), 0.05)
st.session_state["val_fraction"] = val_fraction


@st.cache_data(ttl=300, max_entries=8, show_spinner="Checking the dataset (new files are read once each)…")
def _health(spec: str, val_fraction: float):
    """The health check, once per dataset and split for a few minutes, not on every rerun.

    A changed folder shows after the cache expires or with the Re-check button.
    """
    return health_check(spec, val_fraction=val_fraction)


if st.button("Re-check files", key="recheck", help="scan the dataset again (new or changed files)"):
    _health.clear()
try:
    dataset, health = _health(spec, val_fraction)
except (UserError, ImageProblem) as exc:
    st.error(str(exc))
    st.stop()

manifest, usable = dataset.manifest, dataset.usable
st.subheader(_label(spec))
cols = st.columns(4)
cols[0].metric("Usable images", f"{health['num_usable']:,}")
cols[1].metric("Classes", len(dataset.classes))
cols[2].metric("Left out", f"{health['num_files'] - health['num_usable']:,}")
cols[3].metric("Flagged", f"{health['flagged']['count']:,}")
for error in health["errors"]:
    st.error(error)
for warning in health["warnings"]:
    st.warning(warning)
if not health["warnings"] and not health["errors"]:
    st.success("No problems found.")

st.header("Class balance")
counts = usable.groupby(["label", "split"]).size().reset_index(name="images")
st.plotly_chart(px.bar(counts, x="label", y="images", color="split", barmode="group"), width="stretch")
balance = health["balance"]
ratio = balance["imbalance_ratio"]
st.write(f"Imbalance ratio (largest / smallest training class): **{ratio:.2f}**" if ratio else
         "Some class has no training images.")
weights = pd.DataFrame({"class": list(balance["train_counts"]),
                        "train images": list(balance["train_counts"].values()),
                        "suggested weight": [balance["class_weights"].get(c) for c in balance["train_counts"]]})
_table(weights, "class_balance", "dl_balance")
if balance["suggest_class_weights"]:
    st.info("Classes are imbalanced: weighting the loss by the suggested weights keeps small classes from "
            "being ignored.")

st.header("Split")
split = health["split"]
if split["source"] == "generated":
    st.write(f"No split in the data: a stratified split with seed {split['seed']} sends "
             f"{split['val_fraction']:.0%} of each class to validation.")
else:
    st.write(f"Split taken from the data ({split['source']}); the slider above does not change it.")
st.write(", ".join(f"{k}: **{v}**" for k, v in split["sizes"].items()))

st.header("Images")
c1, c2 = st.columns(2)
c1.plotly_chart(px.histogram(usable, x="width", color="label", title="Width (px)"), width="stretch")
c2.plotly_chart(px.histogram(usable, x="height", color="label", title="Height (px)"), width="stretch")
c3, c4 = st.columns(2)
c3.plotly_chart(px.scatter(usable.assign(aspect=usable["width"] / usable["height"]), x="width", y="height",
                           color="label", hover_data=["path", "aspect"], title="Size and aspect ratio"),
                width="stretch")
c4.plotly_chart(px.histogram(usable.assign(kb=usable["bytes"] / 1024), x="kb", title="File size (KB)"),
                width="stretch")
st.write("Colour modes: " + ", ".join(f"{k} **{v}**" for k, v in health["images"]["modes"].items()))

st.header("Unreadable files")
bad = manifest[manifest["status"] != "ok"][["path", "label", "status"]]
if bad.empty:
    st.write("Every file is a readable image.")
else:
    st.write(f"{len(bad)} file(s) are left out of training:")
    _table(bad, "unreadable_files", "dl_bad")

st.header("Duplicates")
for kind, title in (("exact", "Exact duplicates (identical bytes)"),
                    ("near", "Near-duplicates (perceptual hash)")):
    d = health["duplicates"][kind]
    st.subheader(title)
    st.write(f"{d['pairs']} pair(s): {d['within_class']} within a class, {d['conflicting_labels']} with "
             f"conflicting labels, {d['across_splits']} across train/val (leakage).")
    if d["examples"]:
        _table(pd.DataFrame(d["examples"]), f"{kind}_duplicates", f"dl_{kind}")

st.header("Gallery")
label = st.selectbox("Class", dataset.classes, key="gallery_class")
_gallery(dataset.root, usable[usable["label"] == label])

flagged = pd.DataFrame(health["flagged"]["examples"])
st.subheader("Flagged images")
if flagged.empty:
    st.write("Nothing flagged.")
else:
    viewable = flagged[flagged["path"].isin(set(usable["path"]))]
    _gallery(dataset.root, viewable, captions=[f"{r.label}: {r.reason[:60]}" for r in viewable.itertuples()])
    _table(flagged, "flagged_images", "dl_flagged")

st.header("Label issues")
label_review(spec, dataset, refresh=_health.clear)

st.header("Embedding map")
st.caption("MobileNetV2 features of up to 2,000 images at 96 px, projected to 2-D. Points whose nearest "
           "neighbours mostly carry another label may be mislabelled.")
method = st.radio("Projection", list(METHODS), horizontal=True, key="embed_method")
task, points = embedding_status(dataset, method)
if points is None and not (task and task["state"] == "running"):
    if task and task["state"] == "failed":
        st.error(f"The embedding map failed: {task['error']}")
    if st.button("Compute embedding map", key="embed_go",
                 help="runs in the background; about a minute per 2,000 images on CPU"):
        try:
            task = start_embedding_map(spec, dataset, method)
        except UserError as exc:
            st.error(str(exc))
if points is None and task and task["state"] == "running":
    @st.fragment(run_every="1s")
    def _wait_for_map() -> None:
        now, _ = embedding_status(dataset, method)
        if not now or now["state"] != "running":
            st.rerun()  # once: the full page redraws with the map
        st.info("Computing the embedding map in the background…", icon=":material/hourglass_top:")

    _wait_for_map()
if points is not None:
    st.plotly_chart(px.scatter(points, x="x", y="y", color="label", symbol="suspect",
                               hover_data=["path", "label", "split", "neighbour_agreement"]),
                    width="stretch")
    suspects = points[points["suspect"]]
    st.write(f"{len(suspects)} possible mislabel(s).")
    if len(suspects):
        _gallery(dataset.root, suspects, captions=list(suspects["label"].head(GALLERY)))
        _table(suspects, "possible_mislabels", "dl_suspects")
