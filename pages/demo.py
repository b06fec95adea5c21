"""Model demo: what a share link opens. One run's results and its model, nothing else of the workspace.

Anyone with the link uploads an image or takes a picture and sees the model's answer.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.data.images import IMAGE_SUFFIXES
from engine.errors import UserError
from engine.evaluation import load_evaluation
from engine.export.analyse import analyse_images
from engine.export.inference import get_classifier
from engine.hosting.sharing import shared_run
from app.state import share_param, require_frame

require_frame()  # a deep link on a fresh server runs through the frame

st.title("Model demo")
try:
    run = shared_run(share_param())
    config = run.config()
    classes = get_classifier(run.onnx_file).classes
except UserError as exc:
    st.error(str(exc))
    st.stop()

evaluation = load_evaluation(run.path)
st.caption(f"An image classifier trained with Transfer Studio: {config.get('backbone')} "
           f"({config.get('mode')}). Upload an image or take a picture to see what it says.")

if evaluation is not None:
    head = evaluation.summary["headline"]
    cols = st.columns(3)
    for col, (name, label) in zip(cols, [("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy"),
                                         ("macro_f1", "Macro-F1")]):
        col.metric(label, f"{head[name]['value']:.3f}",
                   help=f"on {evaluation.summary['images']} validation images; 95 % interval "
                        f"[{head[name]['low']:.3f}, {head[name]['high']:.3f}]")
elif (eval_json := run.evaluation()) and "accuracy" in eval_json:
    st.metric("Validation accuracy", f"{eval_json['accuracy']:.3f}")
st.caption("Classes: " + ", ".join(f"`{c}`" for c in classes))

source = st.radio("Image from", ["Upload", "Camera"], horizontal=True, key="demo_source")
if source == "Camera":
    shot = st.camera_input("Take a picture", key="demo_camera")
    files = [("camera.jpg", shot.getvalue())] if shot is not None else []
else:
    upload = st.file_uploader("An image", type=sorted(s.lstrip(".") for s in IMAGE_SUFFIXES), key="demo_upload")
    files = [(upload.name, upload.getvalue())] if upload is not None else []

if files:
    try:
        result = analyse_images(run.path, files, top_k=min(5, len(classes)), budget="demo")
    except UserError as exc:
        st.error(str(exc))
        st.stop()
    for problem in result["errors"]:
        hint = "" if problem.get("request") else " Try a PNG or JPEG image."
        st.error(f"**{problem['file']}**: {problem['error']}.{hint}")
    for row in result["rows"]:
        left, right = st.columns([1, 2])
        left.image(result["images"][row["file"]], width="stretch")
        right.subheader(f"{row['prediction']} ({row['probability']:.0%})")
        if row.get("unlike_training"):
            right.warning("This image looks unlike the images the model was trained on; treat its answer "
                          "with caution.")
        right.bar_chart(pd.DataFrame(row["top_k"]).set_index("class")["probability"], horizontal=True)
