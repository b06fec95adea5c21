"""Label page: the next images of the unlabelled pool, pre-labelled by the current model; the analyst confirms or
corrects them with one key per class, the probe refits in seconds and the curve gains a point.

The pool's features are computed once by a background task (``python -m engine suggest``); everything else
(suggestions, refits) is the engine's :class:`engine.dataloop.pool.LabelLoop` on those cached features.
"""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from engine.data.dataset import load_dataset
from engine.data.images import ImageProblem, load_rgb
from engine.dataloop.pool import UNLABELLED_DIR, LabelLoop, resolve_pool, save_uploaded_pool
from engine.errors import UserError
from engine.workflow.dataloop import pool_features_state, start_pool_features
from app.state import current_backbone, current_dataset, require_frame

require_frame()  # a deep link on a fresh server runs through the frame

st.title("Label")
spec, backbone = current_dataset(), current_backbone()
st.caption(f"Dataset **{spec}** · backbone **{backbone}**. The images to label next are chosen by measurement "
           "(`python -m engine bench active`); each comes with the current model's label and confidence.")
try:
    dataset = load_dataset(spec)
except UserError as exc:
    st.error(f"Cannot open the dataset: {exc}")
    st.stop()

where = st.radio("Unlabelled images", [f"{UNLABELLED_DIR}/ inside the dataset", "upload a .zip"], horizontal=True,
                 key="label_source")
try:
    if where.startswith("upload"):
        upload = st.file_uploader("A .zip of unlabelled images", type=["zip"], key="label_upload")
        if upload is None:
            st.info("Upload a .zip of images nobody has labelled yet.")
            st.stop()
        pool_dir = save_uploaded_pool(upload.name, upload.getvalue())
    else:
        pool_dir = resolve_pool(dataset)
    loop = LabelLoop(dataset, pool_dir, backbone=backbone)
except UserError as exc:
    st.warning(str(exc))
    st.stop()

if not loop.features_ready():
    state = pool_features_state(loop)
    if state is None or state["state"] in ("failed", "cancelled"):
        if state and state.get("error"):
            st.error(f"Reading the pool failed: {state['error']}")
        try:
            start_pool_features(loop)
        except UserError as exc:
            st.error(str(exc))
            st.stop()

    @st.fragment(run_every="2s")
    def wait_for_features() -> None:
        if loop.features_ready() or (pool_features_state(loop) or {}).get("state") != "running":
            st.rerun()
        st.info(f"Reading {len(loop.files)} pool images and the dataset's features in the background…",
                icon=":material/hourglass_top:")

    wait_for_features()
    st.stop()

classes = dataset.classes
keys = [str((i + 1) % 10) for i in range(min(10, len(classes)))]  # 1..9, then 0 for the tenth class
size = st.number_input("Images per batch", 4, 48, 12, step=4, key="label_batch")
state_key = f"label_{loop.key()}"
batch = st.session_state.setdefault(state_key, {"rows": [], "labels": {}, "history": [], "cursor": 0})
if st.button("Suggest the next batch", icon=":material/auto_awesome:", key="label_suggest") or not batch["rows"]:
    batch.update(rows=loop.suggest(int(size)), labels={}, history=[], cursor=0)
rows = batch["rows"]
if not rows:
    st.success("Every image of the pool is labelled.")
else:
    batch["cursor"] = min(batch["cursor"], len(rows) - 1)
    current = rows[batch["cursor"]]
    st.markdown(f"**Image {batch['cursor'] + 1} of {len(rows)}**: press a class's key to label it "
                "(the model's label is kept with **K**), **U** undoes the last key.")
    buttons = st.columns(len(keys) + 2)
    for i, key in enumerate(keys):
        if buttons[i].button(classes[i], key=f"label_class_{i}", shortcut=key, width="stretch"):
            batch["labels"][current["path"]] = classes[i]
            batch["history"].append(current["path"])
            batch["cursor"] = min(batch["cursor"] + 1, len(rows) - 1)
            st.rerun()
    if buttons[-2].button("Keep", key="label_keep", shortcut="k", help="the model's label for this image"):
        batch["labels"][current["path"]] = current["suggested"]
        batch["history"].append(current["path"])
        batch["cursor"] = min(batch["cursor"] + 1, len(rows) - 1)
        st.rerun()
    if buttons[-1].button("Undo", key="label_undo", shortcut="u", disabled=not batch["history"]):
        last = batch["history"].pop()
        batch["labels"].pop(last, None)
        batch["cursor"] = next(i for i, r in enumerate(rows) if r["path"] == last)
        st.rerun()
    if len(classes) > len(keys):
        st.caption(f"Classes past the tenth have no key: pick them in the grid below ({', '.join(classes[10:])}).")
    grid = st.columns(6)
    for i, row in enumerate(rows):
        with grid[i % 6]:
            try:
                img = load_rgb(pool_dir / row["path"])
                img.thumbnail((160, 160))
                st.image(img, width="stretch")
            except ImageProblem as exc:
                st.caption(f"unreadable: {exc}")
            given = batch["labels"].get(row["path"])
            marker = "▶ " if i == batch["cursor"] else ""
            st.caption(f"{marker}{row['path']}\n\nmodel: {row['suggested']} ({100 * row['confidence']:.0f} %)"
                       + (f"\n\n**you: {given}**" if given else ""))
    done = len(batch["labels"])
    if st.button(f"Confirm {done} label(s) and refit", type="primary", disabled=not done, key="label_confirm"):
        with st.spinner("Refitting the probe…"):
            point = loop.confirm(dict(batch["labels"]))
        batch.update(rows=[], labels={}, history=[], cursor=0)
        st.toast(f"{point['labels']} labels: validation accuracy {100 * point['accuracy']:.1f} %")
        st.rerun()

curve = loop.curve()
left, right = st.columns([3, 1])
if right.button("Undo the last confirmed batch", key="label_undo_batch", disabled=len(curve) < 2):
    loop.undo()
    st.rerun()
if curve:
    fig = go.Figure(go.Scatter(x=[p["labels"] for p in curve], y=[100 * p["accuracy"] for p in curve],
                               mode="lines+markers", name="validation accuracy"))
    fig.update_layout(xaxis_title="labels used", yaxis_title="validation accuracy (%)", height=320,
                      margin={"t": 20, "b": 40})
    left.plotly_chart(fig, key="label_curve")
    acc, n_val = curve[-1]["accuracy"], max(1, curve[-1]["val_images"])
    half = 196 * (acc * (1 - acc) / n_val) ** 0.5  # 95 % normal interval, points
    right.metric("Validation accuracy", f"{100 * acc:.1f} ± {half:.1f} %",
                 help=f"on {curve[-1]['val_images']} validation images (95 % interval)")
    right.caption(f"{curve[-1]['pool_labels']} pool images labelled; {curve[-1]['labels']} labels in all")
else:
    left.caption("The curve starts with the first confirmed batch.")
