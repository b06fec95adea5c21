"""Backbone page: the catalogue (torchvision, EfficientNet-Lite, timm) with what loads here and how fast it runs
here, a weights file for any architecture, and the quick probe sweep that recommends one for this dataset."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.errors import UserError
from engine.features.catalogue import backbone_catalogue
from engine.sweep import MAX_BACKBONES, MIN_BACKBONES, latest_sweep
from engine.workflow import start_sweep, sweep_status
from app.state import current_backbone, current_dataset, set_backbone, require_frame

require_frame()  # a deep link on a fresh server runs through the frame

st.title("Backbone")
st.caption("The pretrained network whose features your classifier builds on. Published ImageNet figures say how "
           "good it is in general; the sweep below says how good it is on *your* images, and how fast it runs "
           "on this server.")

size = int(st.number_input("Image size (px) for the measured latency and the sweep", 32, 512, 224, step=16,
                           key="sweep_size", help="every backbone sees this size; latency is measured once per "
                           "backbone and size on this host and kept"))


@st.cache_data(ttl=60, show_spinner=False)
def _catalogue(size: int) -> pd.DataFrame:
    # Availability can change (weights supplied or downloaded), hence the short ttl.
    return pd.DataFrame(backbone_catalogue(image_size=size))


table = _catalogue(size)
names = table["backbone"].tolist()
available = dict(zip(table["backbone"], table["available"]))

if st.session_state.get("backbone_pick") not in names:
    st.session_state["backbone_pick"] = current_backbone() if current_backbone() in names else names[0]


def _on_pick() -> None:
    # A callback runs before the script, so the sidebar already shows the new pick.
    set_backbone(st.session_state["backbone_pick"])


def _use(name: str) -> None:
    st.session_state["backbone_pick"] = name
    set_backbone(name)


st.selectbox(
    "Backbone for the next training run",
    names,
    key="backbone_pick",
    on_change=_on_pick,
    format_func=lambda n: n if available[n] else f"{n}  (weights not on this machine)",
)
picked = st.session_state["backbone_pick"]
if current_backbone() != picked:  # e.g. a backbone given in the URL that the picker corrected
    set_backbone(picked)
row = table.set_index("backbone").loc[picked]
if available[picked]:
    st.success(f"**{picked}** will be used for training: {row['params_m']} M parameters, "
               f"{row['gflops']} GFLOPs at {row['input_size']} px, ImageNet top-1 {row['imagenet_top1']:.1f}% "
               f"(weights: {row['weights_source']}).")
else:
    st.warning(f"The pretrained weights of **{picked}** are not on this machine: {row['weights_source']}. "
               "Training it pretrained fails until they are; 'from scratch' training works without them.")

st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    height=35 * (len(table) + 1) + 3,  # every backbone visible without scrolling
    column_config={
        "backbone": st.column_config.TextColumn("Backbone"),
        "family": st.column_config.TextColumn("Family"),
        "params_m": st.column_config.NumberColumn("Params (M)", format="%.2f"),
        "gflops": st.column_config.NumberColumn("GFLOPs", format="%.2f", help="at the native input size"),
        "imagenet_top1": st.column_config.NumberColumn("ImageNet top-1 %", format="%.1f"),
        "input_size": st.column_config.NumberColumn("Native px"),
        "available": st.column_config.CheckboxColumn("Loads now"),
        "weights_source": st.column_config.TextColumn("Weights", width="large"),
        "ort_ms_b1": st.column_config.NumberColumn("ms/img b1", format="%.2f",
                                                   help=f"onnxruntime, CPU, batch 1, {size} px, measured here"),
        "ort_ms_b32": st.column_config.NumberColumn("ms/img b32", format="%.2f",
                                                    help=f"onnxruntime, CPU, batch 32, {size} px, measured here"),
        "eager_ms_b32": st.column_config.NumberColumn("eager ms/img b32", format="%.2f",
                                                      help="PyTorch eager in the same measurement"),
        "notes": st.column_config.TextColumn("Notes"),
    },
)
st.download_button("Download table (CSV)", table.to_csv(index=False), "backbones.csv", "text/csv",
                   on_click="ignore")

with st.expander("Supply a weights file", icon=":material/upload_file:"):
    st.caption("A `.safetensors` file or a PyTorch state dict (`.pth`/`.pt`, read as weights only) for one of "
               "the architectures above. It is checked key by key and shape by shape before it is used; "
               "the ImageNet classifier may be missing.")
    arch = st.selectbox("Architecture", names, key="weights_arch")
    upload = st.file_uploader("Weights file", type=["safetensors", "pth", "pt", "bin"], key="weights_file")
    if upload is not None and st.button("Check and use these weights", key="weights_install"):
        import tempfile

        from engine.models.supplied import install_weights

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(upload.name).name
            path.write_bytes(upload.getvalue())
            try:
                stored = install_weights(arch, path)
            except UserError as exc:
                st.error(str(exc))
            else:
                _catalogue.clear()
                st.success(f"The weights fit **{arch}**; stored as `{stored}`. It now loads offline.")

# --- the quick probe sweep ----------------------------------------------------------------------------------------
st.subheader("Which backbone suits this dataset?")
dataset = current_dataset()
dataset_name = Path(dataset).name if "/" in str(dataset) else dataset
loadable = [n for n in names if available[n]]
st.caption(f"A quick probe sweep on **{dataset_name}**: for each ticked backbone, frozen features (computed once, "
           "then cached), a linear probe fitted to convergence, validation accuracy, balanced accuracy and macro-F1, "
           "and the latency measured on this server. Runs in the background; you can leave the page.")
if len(loadable) < MIN_BACKBONES:
    st.info("Fewer than two backbones load on this machine; supply weights above to compare more.")
    st.stop()
if "sweep_pick" in st.session_state and not set(st.session_state["sweep_pick"]) <= set(loadable):
    del st.session_state["sweep_pick"]
chosen = st.multiselect(f"Backbones to compare ({MIN_BACKBONES} to {MAX_BACKBONES}, only those that load now)",
                        loadable, default=loadable[:3], max_selections=MAX_BACKBONES, key="sweep_pick")
if st.button("Run sweep", type="primary", icon=":material/compare_arrows:", key="sweep_start",
             disabled=len(chosen) < MIN_BACKBONES):
    try:
        start_sweep(dataset, chosen, image_size=size)
    except UserError as exc:
        st.error(f"Cannot start the sweep: {exc}")

folder = latest_sweep(dataset)
status = sweep_status(folder) if folder is not None else None


@st.fragment(run_every="2s" if status and status["state"] == "running" else None)
def _progress() -> None:
    if folder is None:
        return
    now = sweep_status(folder)
    if status and status["state"] == "running" and now["state"] != "running":
        st.rerun()
    if now["state"] == "running":
        for name, p in (now["progress"] or {}).items():
            done = p["done"] / max(1, p["total"]) if p["stage"] != "done" else 1.0
            st.progress(min(1.0, done), text=f"{name}: {p['stage']}")
        if not now["progress"]:
            st.info("Starting the sweep…", icon=":material/hourglass_top:")
    elif now["state"] in ("failed", "cancelled"):
        st.error(f"The sweep stopped: {now.get('error')}")


_progress()
result = status["result"] if status else None
if result is None:
    if status is None:
        st.info("No sweep on this dataset yet: tick two or more backbones and press **Run sweep**.")
    st.stop()

rows = pd.DataFrame(result["rows"])
rec = result["recommendation"]
st.success(rec["sentence"][0].upper() + rec["sentence"][1:], icon=":material/recommend:")
st.caption(f"{result['train_images']} training and {result['val_images']} validation images at "
           f"{result['image_size']} px; {result['seconds']:.0f} s.")
c1, c2 = st.columns(2)
c1.button(f"Use {rec['best']} for training", key="use_best", on_click=_use, args=(rec["best"],),
          icon=":material/check:")
if rec["fastest_within_one_point"] != rec["best"]:
    c2.button(f"Use {rec['fastest_within_one_point']} for training", key="use_fastest", on_click=_use,
              args=(rec["fastest_within_one_point"],), icon=":material/bolt:")

front = rows[rows["backbone"].isin(result["pareto"])].sort_values("ort_ms_b1")
fig = go.Figure()
fig.add_trace(go.Scatter(x=front["ort_ms_b1"], y=100 * front["accuracy"], mode="lines", name="Pareto front",
                         line=dict(color="#9ca3af", dash="dot")))
fig.add_trace(go.Scatter(
    x=rows["ort_ms_b1"], y=100 * rows["accuracy"], mode="markers+text", text=rows["backbone"], name="backbones",
    textposition="top center", marker=dict(size=12, color=["#2563eb" if b in result["pareto"] else "#9ca3af"
                                                            for b in rows["backbone"]]),
    customdata=100 * rows[["balanced_accuracy", "macro_f1"]].to_numpy(),
    hovertemplate="%{text}<br>accuracy %{y:.1f}%<br>balanced %{customdata[0]:.1f}% · macro-F1 %{customdata[1]:.1f}%"
                  "<br>%{x:.2f} ms/image<extra></extra>"))
fig.update_layout(height=420, margin=dict(l=10, r=10, t=40, b=10), showlegend=False,
                  title="Validation accuracy vs latency measured here (onnxruntime, CPU, batch 1)",
                  xaxis_title="ms per image (log)", yaxis_title="validation accuracy %")
fig.update_xaxes(type="log")
st.plotly_chart(fig, width="stretch", key="sweep_chart")

shown = rows.assign(**{c: 100 * rows[c] for c in ("accuracy", "balanced_accuracy", "macro_f1")},
                    pareto=rows["backbone"].isin(result["pareto"]))
st.dataframe(
    shown[["backbone", "accuracy", "balanced_accuracy", "macro_f1", "ort_ms_b1", "ort_ms_b32", "eager_ms_b32",
           "eager_over_ort_b32", "params_m", "gflops", "imagenet_top1", "pareto"]],
    hide_index=True, width="stretch",
    column_config={
        "accuracy": st.column_config.NumberColumn("Val accuracy %", format="%.1f"),
        "balanced_accuracy": st.column_config.NumberColumn("Balanced acc. %", format="%.1f"),
        "macro_f1": st.column_config.NumberColumn("Macro-F1 %", format="%.1f"),
        "ort_ms_b1": st.column_config.NumberColumn("ms/img b1", format="%.2f"),
        "ort_ms_b32": st.column_config.NumberColumn("ms/img b32", format="%.2f"),
        "eager_ms_b32": st.column_config.NumberColumn("eager ms/img b32", format="%.2f"),
        "eager_over_ort_b32": st.column_config.NumberColumn("eager / onnxruntime", format="%.1fx"),
        "params_m": st.column_config.NumberColumn("Params (M)", format="%.2f"),
        "gflops": st.column_config.NumberColumn("GFLOPs", format="%.2f"),
        "imagenet_top1": st.column_config.NumberColumn("ImageNet top-1 %", format="%.1f"),
        "pareto": st.column_config.CheckboxColumn("Pareto front"),
    },
)
