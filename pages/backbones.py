"""Backbone page: compare the pretrained backbones and pick one for training."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from engine.models import backbone_catalogue
from app.state import current_backbone, set_backbone

st.title("Backbone")
st.caption("The pretrained network whose features your classifier builds on. Smaller and faster ones suit CPU "
           "training and small datasets; larger ones are more accurate on ImageNet but slower to train and serve.")


@st.cache_data(ttl=60, show_spinner=False)
def _catalogue() -> pd.DataFrame:
    # Availability can change (a weight package installed), hence the short ttl.
    return pd.DataFrame(backbone_catalogue())


table = _catalogue()
names = table["backbone"].tolist()
available = dict(zip(table["backbone"], table["available"]))

if st.session_state.get("backbone_pick") not in names:
    st.session_state["backbone_pick"] = current_backbone() if current_backbone() in names else names[0]


def _on_pick() -> None:
    # A callback runs before the script, so the sidebar already shows the new pick.
    set_backbone(st.session_state["backbone_pick"])


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
    st.warning(f"The pretrained weights of **{picked}** are not on this machine ({row['weights_source']}). "
               "Training it pretrained will try to download them and fails without internet; "
               "'from scratch' training works without them. Pick a backbone marked available to train offline.")

# The table, then the chart, each full width: the scatter's labels need the room.
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    height=35 * (len(table) + 1) + 3,  # every backbone visible without scrolling
    column_config={
        "backbone": st.column_config.TextColumn("Backbone"),
        "params_m": st.column_config.NumberColumn("Params (M)", format="%.2f"),
        "gflops": st.column_config.NumberColumn("GFLOPs", format="%.2f", help="at the native input size"),
        "imagenet_top1": st.column_config.NumberColumn("ImageNet top-1 %", format="%.1f"),
        "input_size": st.column_config.NumberColumn("Input px"),
        "available": st.column_config.CheckboxColumn("Available now"),
        "weights_source": st.column_config.TextColumn("Weights source"),
        "notes": st.column_config.TextColumn("Notes"),
    },
)
st.download_button("Download table (CSV)", table.to_csv(index=False), "backbones.csv", "text/csv",
                   on_click="ignore")
plot = table.assign(weights=table["available"].map({True: "available", False: "needs download"}))
fig = px.scatter(
    plot, x="gflops", y="imagenet_top1", size="params_m", color="weights", text="backbone",
    hover_data=["params_m", "input_size", "weights_source"], log_x=True,
    color_discrete_map={"available": "#2563eb", "needs download": "#9ca3af"},
    labels={"gflops": "GFLOPs (log)", "imagenet_top1": "ImageNet top-1 %", "params_m": "Params (M)"},
    title="Accuracy vs compute (bubble size = parameters)",
)
fig.update_traces(textposition="top center", textfont_size=10)
fig.update_xaxes(tickvals=[0.05, 0.1, 0.2, 0.5, 1, 2, 5])
fig.update_layout(height=480, margin=dict(l=10, r=10, t=50, b=10), legend_title_text="")
st.plotly_chart(fig, width="stretch", key="backbone_scatter")
