"""Evaluate: where and why a finished run fails, read from the evaluation the engine stored with the run."""
from __future__ import annotations

import time

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.state import pick_run, require_frame
from engine.errors import UserError
from engine.evaluation import activation_maps, compare_runs, load_evaluation
from engine.workflow import evaluation_state, follow_up, start_evaluation
from engine.runs import list_runs
from engine.jobs.view import run_label

require_frame()  # a deep link on a fresh server runs through the frame

GALLERY_COLUMNS = 6
GALLERY_MAX = 24

st.title("Evaluate")
st.caption("Where and why the model fails on the validation split: figures with 95 % confidence intervals, "
           "the images behind every confusion-matrix cell, what the model looked at, calibration, and how two "
           "runs differ.")

runs = [run for run in list_runs() if run.best_checkpoint.is_file()]
if not runs:
    st.info("No trained run yet. Train one on the **Train** page; it is evaluated when training ends.")
    st.stop()
by_id = {run.id: run for run in runs}
run = pick_run("Run", runs, key="eval_run", on_pick=lambda: st.session_state.pop("eval_cam", None))
evaluation = load_evaluation(run.path)
task = evaluation_state(run.path)

if task and task.get("state") == "running":
    # Evaluation runs as its own process (decode, one pass over train and validation, bootstrap); watch it.
    @st.fragment(run_every=2)
    def _watch() -> None:
        state = evaluation_state(run.path)
        if not state or state.get("state") != "running":
            st.rerun()
        st.info(f"Evaluating run `{run.id}` ({time.time() - state.get('started_at', time.time()):.0f} s) …")

    _watch()
    st.stop()
if task and task.get("state") == "failed":
    st.error(f"The last evaluation did not finish: {task.get('error')}")
if (follow_up(run) or {}).get("stage") == "evaluate" and (follow_up(run) or {}).get("state") == "running":
    # Right after training: the headline figures are on the Train page; the rest is being computed.
    @st.fragment(run_every=2)
    def _filling_in() -> None:
        fu = follow_up(run) or {}
        if fu.get("state") != "running" or fu.get("stage") != "evaluate":
            st.rerun()
        st.info(f"Filling in: {fu.get('message')} ({time.time() - fu.get('started_at', time.time()):.0f} s) …",
                icon=":material/hourglass_top:")

    _filling_in()
    st.stop()

if evaluation is None or evaluation.stale:
    if evaluation is not None:
        st.warning("The run's weights changed after this evaluation (it was resumed); evaluate it again.")
    else:
        st.info("This run has not been evaluated yet (runs trained before evaluation existed, or whose "
                "evaluation failed).")
    if st.button("Evaluate this run", type="primary", key="eval_start"):
        try:
            start_evaluation(run.path)
        except UserError as exc:
            st.error(str(exc))
        st.rerun()
    if evaluation is None:
        st.stop()

s = evaluation.summary
classes = evaluation.classes
head = s["headline"]
cal = s["calibration"]
cols = st.columns(5)
for col, (name, label) in zip(cols, [("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy"),
                                     ("macro_f1", "Macro-F1")]):
    h = head[name]
    col.metric(label, f"{h['value']:.3f}", help=f"95 % bootstrap interval over the {s['images']} validation "
               f"images ({h.get('resamples', 0)} resamples): a difference inside it may be noise.")
    col.caption(f"95 % CI [{h['low']:.3f}, {h['high']:.3f}]")
cols[3].metric("ECE", f"{cal.get('ece_after', cal.get('ece_before')) or 0:.3f}",
               delta=(f"{cal['ece_after'] - cal['ece_before']:+.3f} after scaling" if cal.get("fitted") else None),
               delta_color="inverse", help="Expected calibration error: how far confidence is from accuracy.")
cols[4].metric("Temperature", f"{cal['temperature']:.3g}",
               help="Probabilities everywhere (Predict, the exported model) are softmax(logits / temperature). "
               + ("Fitted on the validation split." if cal.get("fitted") else cal.get("reason", "")))
st.caption(f"{s['images']} validation images · {len(classes)} classes · evaluated in {s.get('seconds', 0):.0f} s")


def _image_grid(rows: pd.DataFrame, key: str) -> None:
    """Images with true/predicted class and probability; a button under each shows its activation map."""
    rows = rows.head(GALLERY_MAX)
    if rows.empty:
        st.caption("No images here.")
        return
    grid = st.columns(GALLERY_COLUMNS)
    for i, (_, r) in enumerate(rows.iterrows()):
        with grid[i % GALLERY_COLUMNS]:
            st.image(r["file"], width="stretch")
            st.caption(f"true **{r['label_name']}** · predicted **{r['pred_name']}** ({r['confidence']:.2f})")
            st.button("Why?", key=f"{key}_why_{int(r['index'])}", help="Grad-CAM for the predicted and true class",
                      on_click=_pick_cam, args=(int(r["index"]),))


def _pick_cam(index: int) -> None:
    st.session_state["eval_cam"] = index


def _activation_panel() -> None:
    index = st.session_state.get("eval_cam")
    if index is None or index >= len(evaluation.predictions):
        st.caption("Press **Why?** under any image to see which parts of it drove the prediction.")
        return
    r = evaluation.predictions.iloc[index]
    names = list(dict.fromkeys([r["pred_name"], r["label_name"]]))
    try:
        cam = activation_maps(run.path, r["file"], names)
    except (UserError, ValueError, OSError) as exc:
        st.error(f"No activation map for {r['path']}: {exc}")
        return
    with st.container(border=True, key="eval_cam_panel"):
        st.markdown(f"**{r['path']}**: Grad-CAM (captum `LayerGradCam` on the backbone's last stage); red is "
                    "where the evidence for the class lies.")
        c = st.columns(1 + len(names))
        c[0].image(cam["image"], caption="what the model saw", width="stretch")
        for col, name in zip(c[1:], names):
            role = "predicted" if name == r["pred_name"] else "true"
            if name == r["label_name"] and name == r["pred_name"]:
                role = "predicted = true"
            col.image(cam["maps"][name], caption=f"{role}: {name} ({cam['probabilities'][name]:.2f})",
                      width="stretch")


def _download(df: pd.DataFrame, label: str, name: str, key: str) -> None:
    st.download_button(label, df.to_csv(index=False), f"{run.id}-{name}.csv", "text/csv", key=key,
                       on_click="ignore")


tab_err, tab_cls, tab_cal, tab_cmp, tab_fit, tab_all = st.tabs(
    ["Errors", "Per class", "Calibration", "Compare runs", "Overfitting", "All images"])

with tab_err:
    left, right = st.columns([3, 2])
    with left:
        mode = st.radio("Confusion matrix", ["counts", "row-normalised"], horizontal=True, key="eval_cm_mode")
        counts = s["confusion"]["counts"]
        z = counts if mode == "counts" else s["confusion"]["row_normalised"]
        fig = go.Figure(go.Heatmap(z=z, x=classes, y=classes, colorscale="Blues", hoverongaps=False,
                                   texttemplate="%{z}" if mode == "counts" else "%{z:.2f}",
                                   hovertemplate="true %{y}<br>predicted %{x}<br>%{z}<extra></extra>"))
        # Invisible markers on every cell: plotly selects scatter points, not heatmap cells.
        xs = [c for _ in classes for c in classes]
        ys = [t for t in classes for _ in classes]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", marker=dict(size=28, opacity=0.01, symbol="square"),
                                 customdata=[[t, p] for t, p in zip(ys, xs)], hoverinfo="none", showlegend=False))
        fig.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed", height=520,
                          margin=dict(l=10, r=10, t=30, b=10))

        def _on_cell() -> None:
            points = st.session_state["eval_cm"].selection.get("points", [])
            if points:
                st.session_state["eval_true"] = points[0]["y"]
                st.session_state["eval_pred"] = points[0]["x"]

        st.plotly_chart(fig, key="eval_cm", on_select=_on_cell, selection_mode="points", width="stretch")
        cm_table = pd.DataFrame(counts, index=classes, columns=classes).rename_axis("true \\ predicted").reset_index()
        _download(cm_table, "Download confusion matrix (CSV)", "confusion", "eval_dl_cm")
    with right:
        st.markdown("**Images of one cell**: click a cell, or pick it here.")
        if st.session_state.get("eval_true") not in classes or st.session_state.get("eval_pred") not in classes:
            worst = max(((counts[i][j], i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j),
                        default=(0, 0, 0))
            st.session_state["eval_true"], st.session_state["eval_pred"] = classes[worst[1]], classes[worst[2]]
        a, b = st.columns(2)
        a.selectbox("True class", classes, key="eval_true")
        b.selectbox("Predicted class", classes, key="eval_pred")
    cell = evaluation.cell(st.session_state["eval_true"], st.session_state["eval_pred"])
    st.subheader(f"True {st.session_state['eval_true']}, predicted {st.session_state['eval_pred']}: "
                 f"{len(cell)} image(s)")
    with st.container(key="eval_cell_gallery"):
        _image_grid(cell, "cell")
    st.divider()
    _activation_panel()
    st.divider()
    st.subheader("Most confident mistakes")
    _image_grid(evaluation.gallery("confident_mistakes"), "mistakes")
    st.subheader("Least certain images")
    st.caption("Smallest gap between the two most probable classes.")
    _image_grid(evaluation.gallery("least_certain"), "uncertain")

with tab_cls:
    per_class = pd.DataFrame(s["per_class"])
    st.dataframe(per_class, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("precision", "recall", "f1")})
    _download(per_class, "Download per-class table (CSV)", "per-class", "eval_dl_per_class")

with tab_cal:
    st.markdown("**Reliability diagram**: a calibrated model's bars sit on the diagonal.")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="grey"),
                             name="perfect calibration"))
    for which, colour in (("before", "#EF553B"), ("after", "#636EFA")):
        rel = s["reliability"][which]
        edges = rel["edges"]
        mids = [(lo + hi) / 2 for lo, hi in zip(edges[:-1], edges[1:])]
        label = "raw softmax" if which == "before" else f"temperature {cal['temperature']:.3g}"
        fig.add_trace(go.Scatter(x=mids, y=rel["accuracy"], mode="lines+markers",
                                 name=f"{label} (ECE {rel['ece']:.3f})",
                                 line=dict(color=colour), customdata=rel["count"],
                                 hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{customdata} images"))
    fig.update_layout(xaxis_title="confidence (top probability)", yaxis_title="accuracy", height=420,
                      xaxis_range=[0, 1], yaxis_range=[0, 1.02], margin=dict(l=10, r=10, t=30, b=10))
    st.plotly_chart(fig, width="stretch", key="eval_reliability")
    curve = pd.DataFrame(s["threshold_curve"])
    st.markdown("**Confidence threshold**: below it the answer is *unsure*; precision of the answered images "
                "against the share answered (coverage). The Predict page uses this curve.")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=curve["threshold"], y=curve["precision"], name="precision of answered"))
    fig.add_trace(go.Scatter(x=curve["threshold"], y=curve["coverage"], name="coverage (answered)"))
    fig.update_layout(xaxis_title="threshold", yaxis_range=[0, 1.02], height=360, margin=dict(l=10, r=10, t=30, b=10))
    st.plotly_chart(fig, width="stretch", key="eval_threshold")
    ood = s["ood"]
    st.caption(f"Out-of-distribution reference: {ood['method']}; an image scoring above {ood['threshold']:.3f} "
               f"(the {ood['flag_percentile']}th percentile of validation images) is flagged *unlike the training "
               f"data*; {100 * ood['val_flagged_rate']:.1f} % of validation images are.")

with tab_cmp:
    others = [r for r in runs if r.id != run.id]
    if not others:
        st.info("Train a second run on the same dataset to compare the two image by image.")
    else:
        other_id = st.selectbox("Compare with", [r.id for r in others], key="eval_other",
                                format_func=lambda rid: run_label(by_id[rid]))
        try:
            cmp = compare_runs(run.path, by_id[other_id].path)
        except UserError as exc:
            st.warning(str(exc))
        else:
            m = cmp["mcnemar"]
            c1, c2, c3 = st.columns(3)
            c1.metric("This run", f"{cmp['accuracy_a']:.3f}")
            c2.metric("Other run", f"{cmp['accuracy_b']:.3f}", delta=f"{cmp['accuracy_b'] - cmp['accuracy_a']:+.3f}")
            c3.metric("McNemar p-value", f"{m['p_value']:.3g}", help=m["method"])
            verdict = ("a real difference (p < 0.05)" if m["significant_at_0.05"]
                       else "within noise (p ≥ 0.05): the validation split cannot tell these runs apart")
            st.markdown(f"{m['a_only_right']} image(s) only this run gets right, {m['b_only_right']} only the other: "
                        f"{verdict}.")
            flipped = cmp["flipped"]
            st.dataframe(flipped.drop(columns=["file"]), hide_index=True, width="stretch")
            _download(flipped, "Download flipped images (CSV)", "flipped", "eval_dl_flipped")

with tab_fit:
    fit = s["overfitting"]
    if fit.get("epochs"):
        st.info(fit["reading"])
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=fit["epochs"], y=fit["train_loss"], name="train loss"))
        fig.add_trace(go.Scatter(x=fit["epochs"], y=fit["val_loss"], name="validation loss"))
        fig.add_trace(go.Bar(x=fit["epochs"], y=fit["gap"], name="gap (val − train)", opacity=0.35))
        fig.add_vline(x=fit["best_epoch"], line_dash="dash", annotation_text=f"best epoch {fit['best_epoch']}")
        fig.update_layout(xaxis_title="epoch", yaxis_title="loss", height=420, margin=dict(l=10, r=10, t=30, b=10))
        st.plotly_chart(fig, width="stretch", key="eval_overfit")
        if s.get("train_accuracy") is not None:
            total = s["train_images"]
            scored = s.get("train_images_scored", total)  # evaluations before the sample scored them all
            sample = f" (on a sample of {scored} of {total} training images)" if scored < total else ""
            st.caption(f"Best weights: training accuracy {s['train_accuracy']:.3f}{sample}, "
                       f"validation {s['accuracy']:.3f}.")
    else:
        st.caption(fit.get("reading", "no epochs recorded"))

with tab_all:
    table = evaluation.table()
    st.dataframe(table.drop(columns=["file"]), hide_index=True, width="stretch")
    _download(table, "Download per-image predictions (CSV)", "predictions", "eval_dl_predictions")
