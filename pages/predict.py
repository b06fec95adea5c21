"""Predict page: classify uploaded images with a run's exported ONNX model."""
from __future__ import annotations

import io

import pandas as pd
import plotly.express as px
import streamlit as st

from engine.data.images import IMAGE_SUFFIXES, ImageProblem, load_rgb
from engine.errors import UserError
from engine.export.inference import get_classifier
from engine.runs.view import exported_runs, run_label
from app.state import current_run, set_run

st.title("Predict")
st.caption("Upload images and see what a trained model says, with its confidence. The model runs with "
           "onnxruntime from the exported file, exactly as it would in your own application.")

runs = exported_runs()
if not runs:
    st.info("No exported model yet. Train one on the **Train** page; it is exported to ONNX when training ends.")
    st.stop()

by_id = {run.id: run for run in runs}
current = current_run()
if st.session_state.get("predict_run") not in by_id:
    st.session_state["predict_run"] = current.id if current is not None and current.id in by_id else runs[0].id


def _on_pick() -> None:
    set_run(by_id[st.session_state["predict_run"]])


st.selectbox("Model (a run with an ONNX export)", list(by_id), key="predict_run", on_change=_on_pick,
             format_func=lambda rid: run_label(by_id[rid]))
run = by_id[st.session_state["predict_run"]]

try:
    classifier = get_classifier(run.onnx_file)
except UserError as exc:
    st.error(f"Cannot load this model: {exc}")
    st.stop()

classes = classifier.classes
c1, c2 = st.columns([3, 1])
uploads = c1.file_uploader(
    "Images to classify", accept_multiple_files=True, key="predict_uploads",
    help=f"any of: {', '.join(sorted(s.lstrip('.') for s in IMAGE_SUFFIXES))}; other files are reported, not used",
)
top_k = c2.number_input("Top-k classes", 1, len(classes), min(3, len(classes)), key=f"predict_top_k_{len(classes)}")
c2.caption(f"{len(classes)} classes · input {classifier.preprocess['input_size']} px")

if uploads:
    images, problems = [], {}
    for upload in uploads:
        try:
            images.append((upload.name, load_rgb(io.BytesIO(upload.getvalue()))))
        except ImageProblem as exc:
            problems[upload.name] = str(exc)
    for name, reason in problems.items():
        st.error(f"**{name}**: {reason}. Upload a PNG, JPEG, WebP, BMP or TIFF image.")

    results = classifier.predict([img for _, img in images], top_k=int(top_k)) if images else []
    rows = []
    for (name, img), result in zip(images, results):
        if "error" in result:  # decoded above, so rare: e.g. a size the model cannot take
            st.error(f"**{name}**: {result['error']}")
            continue
        top = result["top_k"]
        rows.append({"file": name, "prediction": top[0]["class"], "probability": top[0]["probability"],
                     f"top-{len(top)}": ", ".join(f"{t['class']} {t['probability']:.2f}" for t in top)})
        with st.container(border=True):
            left, right = st.columns([1, 3])
            left.image(img, caption=name, width=160)
            bars = pd.DataFrame(top)
            fig = px.bar(bars, x="probability", y="class", orientation="h", text_auto=".2f",
                         range_x=[0, 1], title=f"{top[0]['class']} ({top[0]['probability']:.0%})")
            fig.update_layout(height=90 + 34 * len(top), margin=dict(l=10, r=10, t=40, b=10),
                              yaxis={"categoryorder": "total ascending", "title": None})
            right.plotly_chart(fig, width="stretch", key=f"predict_bar_{len(rows)}")
    if rows:
        table = pd.DataFrame(rows)
        st.subheader("All predictions")
        st.dataframe(table, hide_index=True, width="stretch",
                     column_config={"probability": st.column_config.ProgressColumn(
                         "probability", format="%.3f", min_value=0.0, max_value=1.0)})
        st.download_button("Download predictions (CSV)", table.to_csv(index=False),
                           f"{run.id}-predictions.csv", "text/csv", on_click="ignore")

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
