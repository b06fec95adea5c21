"""Insight page: what transfer learning buys on this data, measured, and the advice that follows.

The computation (``python -m engine insight``) runs as a background task; this
page starts it, polls it and draws the stored result.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.errors import UserError
from engine.insight import load_insight
from engine.workflow import insight_state, start_insight
from app.state import current_backbone, current_dataset, require_frame

require_frame()  # a deep link on a fresh server runs through the frame

st.title("Insight")
dataset = current_dataset()
backbone = current_backbone()
dataset_name = Path(dataset).name if "/" in str(dataset) else dataset
st.caption(f"Dataset **{dataset_name}** · backbone **{backbone}**. How many labels you need, which layers transfer, "
           "how far your images are from ImageNet, and what transfer gains: measured on your data.")

c1, c2, c3 = st.columns([1, 1, 2])
size = c1.number_input("Feature size (px)", 32, 224, 64, step=16, key="insight_size",
                       help="frozen features at this size (the ImageNet head always sees 224 px)")
scratch = c2.checkbox("From-scratch baseline", value=True, key="insight_scratch",
                      help="trains the architecture from random weights at two sizes: the slow part on CPU")
if c3.button("Compute insight", type="primary", icon=":material/insights:", key="insight_start"):
    try:
        start_insight(dataset, backbone, image_size=int(size), scratch=scratch)
    except UserError as exc:
        st.error(f"Cannot compute the insight: {exc}")

task = insight_state(dataset, backbone)


@st.fragment(run_every="2s" if task and task["state"] == "running" else None)
def progress() -> None:
    now = insight_state(dataset, backbone)
    if now is None:
        return
    if task and task["state"] == "running" and now["state"] != "running":
        st.rerun()
    if now["state"] == "running":
        st.info("Computing in the background (features, curve, stages, ImageNet head)… a few minutes on CPU.",
                icon=":material/hourglass_top:")
    elif now["state"] == "failed":
        st.error(f"The insight failed: {now.get('error')}")


progress()
result = load_insight(dataset, backbone)
if result is None:
    st.info("No insight for this dataset and backbone yet. Press **Compute insight**.")
    st.stop()

st.subheader("Advice")
st.info(" ".join(result["advice"]), icon=":material/lightbulb:")
st.caption(f"Computed at {result['image_size']} px; time per part (s): "
           + ", ".join(f"{k} {v}" for k, v in result["timings_s"].items()))


def _table(rows: list[dict], name: str, key: str) -> None:
    frame = pd.DataFrame(rows)
    st.dataframe(frame, hide_index=True, width="stretch", key=f"{key}_table")
    st.download_button(f"Download {name} (CSV)", frame.to_csv(index=False), f"{dataset_name}-{backbone}-{name}.csv",
                       "text/csv", on_click="ignore", key=f"{key}_csv")


# ------------------------------------------------------------ 1. data-efficiency curve
curve = result["curve"]
st.subheader("1 · How many labelled images do you need?")
points = curve["points"]
n = [p["per_class"] for p in points]
fig = go.Figure()
fig.add_trace(go.Scatter(x=n, y=[p["mean"] for p in points], mode="lines+markers", name="linear probe (mean)",
                         error_y=dict(type="data", array=[p["std"] for p in points], visible=True)))
fig.add_trace(go.Scatter(x=n + n[::-1], y=[p["max"] for p in points] + [p["min"] for p in points][::-1],
                         fill="toself", line=dict(width=0), opacity=0.2, name="range over draws"))
if curve["scratch"]:
    fig.add_trace(go.Scatter(x=[p["per_class"] for p in curve["scratch"]], y=[p["mean"] for p in curve["scratch"]],
                             mode="markers", marker=dict(size=11, symbol="x"), name="from scratch",
                             error_y=dict(type="data", array=[p["se"] for p in curve["scratch"]], visible=True)))
fit = curve["fit"]
if fit.get("good"):
    ext = fit["extrapolation"]
    fig.add_trace(go.Scatter(x=[n[-1]] + [e["per_class"] for e in ext], y=[points[-1]["mean"]] +
                             [e["predicted"] for e in ext], mode="lines+markers", line=dict(dash="dot"),
                             name="fitted learning curve (extrapolated)"))
flat = curve["flattening"]
if flat["flat"]:
    fig.add_vline(x=flat["per_class"], line_dash="dash", line_color="#f97316", annotation_text="flattens")
fig.add_hline(y=curve["chance"], line_dash="dot", line_color="#9ca3af", annotation_text="chance")
fig.update_xaxes(type="log", title="labelled images per class")
fig.update_yaxes(title="validation accuracy", range=[0, 1.02])
fig.update_layout(height=380, margin=dict(l=10, r=10, t=30, b=10))
st.plotly_chart(fig, width="stretch", key="insight_curve")
st.markdown(f"The curve {flat['text']}. " + (f"Fitted {fit['model']} (R² {fit['r2']}): ceiling about "
                                              f"{100 * fit['ceiling']:.1f}%." if fit.get("good") else
                                              f"No extrapolation: {fit.get('reason')}."))
_table([{k: v for k, v in p.items() if k != "accuracies"} for p in points] +
       [{**p, "per_class": p["per_class"], "draws": 1, "std": None} | {"method": "scratch"} for p in curve["scratch"]],
       "curve", "curve")

# ------------------------------------------------------------ 2. which layers transfer
stages = result["stages"]
st.subheader("2 · Which layers transfer?")
rows = stages["rows"]
fig = go.Figure(go.Scatter(x=[r["stage"] for r in rows], y=[r["accuracy"] for r in rows], mode="lines+markers",
                           error_y=dict(type="data", array=[r["se"] for r in rows], visible=True)))
fig.update_xaxes(title="backbone stage (input → output)")
fig.update_yaxes(title="linear-probe validation accuracy")
fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10))
st.plotly_chart(fig, width="stretch", key="insight_stages")
st.markdown(stages["reading"]["text"])
st.caption(f"Each stage's output averaged over space; probe fitted on {stages['train_images']} training images, "
           f"scored on {stages['val_images']} validation images (error bars: binomial standard error).")

# ------------------------------------------------------------ 3. domain distance
domain = result["domain"]
st.subheader("3 · How far is your data from the pretraining data?")
m1, m2, m3 = st.columns(3)
lo, hi = domain["entropy_ci"]
m1.metric("ImageNet head entropy", f"{domain['entropy']:.3f}", help=domain["measure"])
m1.caption(f"95% CI {lo:.3f}–{hi:.3f} over {domain['images']} images")
m2.metric("Ordinary photos (reference)", f"{domain['reference']['entropy']:.3f}",
          help="the same figure on scikit-image's colour photographs: " + ", ".join(domain["reference"]["photos"]))
m3.metric("Reading", domain["reading"].replace(" the pretraining data", ""))
st.markdown(f"Your images are **{domain['reading']}**: the backbone's original ImageNet classifier is "
            f"{100 * domain['confidence']:.0f}% sure of its answer on average, against "
            f"{100 * domain['reference']['confidence']:.0f}% on ordinary photographs.")
_table([{"class": r["class"], "images": r["images"],
         "ImageNet classes (share)": ", ".join(f"{t['imagenet_class']} ({100 * t['share']:.0f}%)"
                                               for t in r["imagenet_top"]),
         "mean confidence": r["confidence"], "mean entropy": r["entropy"]} for r in domain["classes"]],
       "imagenet-mapping", "domain")

# ------------------------------------------------------------ 4. transfer gain
gain = result["gain"]
st.subheader("4 · What does transfer gain?")
if gain["insight"]:
    st.markdown("Same images, same validation split: the from-scratch baseline against the linear probe.")
    _table(gain["insight"], "gain", "gain")
if gain["runs"]:
    runs = pd.DataFrame(gain["runs"])
    fig = go.Figure(go.Bar(x=runs["kind"], y=runs["accuracy"], text=[f"{v:.3f}" for v in runs["accuracy"]],
                           error_y=dict(type="data", symmetric=False,
                                        array=(runs["ci_high"] - runs["accuracy"]).fillna(0),
                                        arrayminus=(runs["accuracy"] - runs["ci_low"]).fillna(0))))
    fig.update_yaxes(title="accuracy", range=[0, 1.02])
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10))
    st.plotly_chart(fig, width="stretch", key="insight_gain")
    _table(gain["runs"], "runs", "runs")
    if runs["epochs"].nunique() > 1:
        st.caption("These runs had different budgets (epochs); compare with that in mind.")
else:
    st.caption("No finished runs of this dataset and backbone yet: train a scratch, a linear-probe and a fine-tune "
               "run at the same epochs on the Train page (or `python -m engine insight DATA --quick-runs`).")
