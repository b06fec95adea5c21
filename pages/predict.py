"""Predict page: classify uploaded images with a run's exported ONNX model."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.data.images import IMAGE_SUFFIXES
from engine.errors import UserError
from engine.evaluation import load_evaluation, threshold_point
from engine.export.analyse import UNSURE, analyse_images
from engine.export.inference import get_classifier
from engine.hosting.sharing import share_run, share_token, share_url, unshare_run
from engine.jobs.view import exported_runs
from app.state import pick_run, require_frame

require_frame()  # a deep link on a fresh server runs through the frame

st.title("Predict")
st.caption("Upload images, a .zip of images, or take a picture, and see what a trained model says, how sure "
           "it is, and whether the image looks like anything it was trained on. The model runs with onnxruntime "
           "from the exported file, exactly as it would in your own application.")

runs = exported_runs()
if not runs:
    st.info("No exported model yet. Train one on the **Train** page; it is exported to ONNX when training ends.")
    st.stop()

run = pick_run("Model (a run with an ONNX export)", runs, key="predict_run")

try:
    classifier = get_classifier(run.onnx_file)
except UserError as exc:
    st.error(f"Cannot load this model: {exc}")
    st.stop()

classes = classifier.classes
evaluation = load_evaluation(run.path)

c1, c2 = st.columns([3, 1])
source = c1.radio("Images from", ["Files or a .zip", "Camera"], horizontal=True, key="predict_source")
if source == "Camera":
    shot = c1.camera_input("Take a picture", key="predict_camera")
    files = [(f"camera-{shot.file_id[:8]}.jpg", shot.getvalue())] if shot is not None else []
else:
    uploads = c1.file_uploader(
        "Images to classify (several at once, or a .zip of images)", accept_multiple_files=True,
        key="predict_uploads",
        help=f"any of: {', '.join(sorted(s.lstrip('.') for s in IMAGE_SUFFIXES))}, or a .zip of them; "
             "a file that is not an image is reported and the others still run")
    files = [(u.name, u.getvalue()) for u in uploads or []]
top_k = c2.number_input("Top-k classes", 1, len(classes), min(3, len(classes)), key=f"predict_top_k_{len(classes)}")
threshold = c2.slider("Answer *unsure* below", 0.0, 1.0, 0.0, 0.01, key="predict_threshold",
                      help="Calibrated top probability under which the model's answer is 'unsure'.")
c2.caption(f"{len(classes)} classes · input {classifier.preprocess['input_size']} px · "
           f"temperature {classifier.temperature:.3g}")

with st.expander("What the threshold costs, on the validation split", expanded=threshold > 0):
    if evaluation is None:
        st.caption("Evaluate the run (Evaluate page) to see the precision/coverage curve.")
    else:
        curve = evaluation.summary["threshold_curve"]
        point = threshold_point(curve, threshold)
        m1, m2 = st.columns(2)
        m1.metric("Precision of answered images", f"{point['precision'] or 0:.3f}")
        m2.metric("Coverage (images answered)", f"{point['coverage']:.3f}")
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=curve["threshold"], y=curve["precision"], name="precision of answered"))
        fig.add_trace(go.Scatter(x=curve["threshold"], y=curve["coverage"], name="coverage"))
        fig.add_vline(x=threshold, line_dash="dash")
        fig.update_layout(xaxis_title="threshold", yaxis_range=[0, 1.02], height=300,
                          margin=dict(l=10, r=10, t=20, b=10))
        st.plotly_chart(fig, width="stretch", key="predict_threshold_curve")

if files:
    try:
        result = analyse_images(run.path, files, top_k=int(top_k), threshold=float(threshold))
    except UserError as exc:
        st.error(str(exc))
        st.stop()
    for problem in result["errors"]:
        if problem.get("request"):
            st.warning(f"Not everything was read: {problem['error']}.")
        else:
            st.error(f"**{problem['file']}**: {problem['error']}. Upload PNG, JPEG, WebP, BMP or TIFF images "
                     "(or a .zip of them).")
    if not result["ood"]["available"]:
        st.caption(f"No out-of-distribution score: {result['ood']['reason']}.")
    rows = result["rows"]
    if rows:
        flagged = sum(r.get("unlike_training", False) for r in rows)
        unsure = sum(r["answer"] == UNSURE for r in rows)
        st.subheader(f"{len(rows)} image(s): {unsure} unsure, {flagged} unlike the training data")
        batch_test = result.get("batch_test") or {}
        if batch_test.get("available"):  # the whole batch against the training data (issue 20)
            (st.warning if batch_test["shifted"] else st.caption)(batch_test["sentence"][0].upper()
                                                                  + batch_test["sentence"][1:] + ".")
        grid = st.columns(6)
        for i, r in enumerate(rows[:60]):
            with grid[i % 6]:
                st.image(result["images"][r["file"]], width="stretch")
                flag = " · :red[unlike the training data]" if r.get("unlike_training") else ""
                st.caption(f"**{r['answer']}** ({r['probability']:.2f}){flag}  \n{r['file']}")
        if len(rows) > 60:
            st.caption(f"Gallery shows the first 60; the table has all {len(rows)}.")
        table = pd.DataFrame([{k: v for k, v in r.items() if k != "top_k"} for r in rows])
        st.subheader("All predictions")
        st.dataframe(table, hide_index=True, width="stretch",
                     column_config={"probability": st.column_config.ProgressColumn(
                         "probability", format="%.3f", min_value=0.0, max_value=1.0),
                         "ms": st.column_config.NumberColumn("ms / image", format="%.1f"),
                         "ood_score": st.column_config.NumberColumn("OOD score", format="%.3f"),
                         "ood_percentile": st.column_config.NumberColumn(
                             "OOD percentile", format="%.1f", help="share of validation images scoring lower"),
                         "unlike_training": st.column_config.CheckboxColumn("unlike the training data")})
        st.download_button("Download predictions (CSV)", table.to_csv(index=False),
                           f"{run.id}-predictions.csv", "text/csv", on_click="ignore")
        if result["ood"]["available"]:
            st.caption(f"*Unlike the training data*: the image's backbone features are farther from the "
                       f"training images' than {result['ood']['flag_percentile']} % of validation images were "
                       f"(score above {result['ood']['threshold']:.3f}); treat its answer with caution.")

st.divider()
st.subheader("Use this model elsewhere")
st.caption("The ONNX file carries its preprocessing (size, mean, std, classes) in its metadata; "
           "preprocess.json holds the same for tools that cannot read it.")
d1, d2, _ = st.columns([1, 1, 2])
# A callable: the 10 MB file is read only when someone clicks, not on every rerun.
d1.download_button("Download model.onnx", run.onnx_file.read_bytes, f"{run.id}.onnx",
                   "application/octet-stream", icon=":material/download:", key="download_onnx", on_click="ignore")
sidecar = run.export_dir / "preprocess.json"
if sidecar.is_file():
    d2.download_button("Download preprocess.json", sidecar.read_text(), "preprocess.json", "application/json",
                       key="download_preprocess", on_click="ignore")

st.divider()
st.subheader("Share this model")
token = share_token(run)
if token is None:
    st.caption("A share link opens this run's results and a demo of its model (upload an image or use the "
               "camera) for anyone who has it, without the rest of your workspace.")
    if st.button("Create a share link", key="share_create", icon=":material/share:"):
        try:
            share_run(run)
            st.rerun()
        except UserError as exc:
            st.error(str(exc))
else:
    st.caption("Anyone with this link sees this run's results and can try its model; nothing else of your "
               "workspace. A shared run is never removed by the idle-workspace clean-up.")
    st.code(share_url(token, st.context.url), language=None)
    if st.button("Stop sharing", key="share_stop", icon=":material/link_off:"):
        unshare_run(run)
        st.rerun()
