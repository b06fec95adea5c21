"""Export: ONNX variants of the current run, their parity gate, and downloads."""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from engine.errors import UserError
from engine.export import STRICT_VARIANTS, VARIANTS, gate_failure, parity_rows, variant_path
from engine.export.bundle import build_bundle, unchanged_variants
from engine.export.quantize import quantization_choices
from engine.workspace import read_json
from engine.workflow import export_job_state, export_progress, follow_up, start_export_job
from app.state import current_run, require_frame

require_frame()  # a deep link on a fresh server runs through the frame

VARIANT_HELP = {
    "fp32": "float32, normalised NCHW input. Reproduces PyTorch; always exported.",
    "fp32-uint8in": "float32 with the normalisation inside the graph: feed resized, cropped uint8 RGB (NHWC).",
    "fp16": "half-precision weights and compute, float32 input/output. Half the size; for GPUs.",
    "int8": "static int8 (QDQ, per-channel), calibrated on training images. ~4x smaller, faster on CPU; "
            "costs some accuracy, shown below.",
}

st.title("Export")
st.caption("ONNX models for onnxruntime, checked image by image against the PyTorch model on the whole "
           "validation split before you can download them.")

run = current_run()
if run is None:
    st.info("Pick or train a run first; the export page works on the current run.")
    st.stop()
if not run.best_checkpoint.is_file():
    st.info(f"Run `{run.id}` has no trained weights yet (state: {run.status().get('state', 'unknown')}).")
    st.stop()

st.caption(f"Run `{run.id}`")
parity_file = run.export_dir / "parity.json"
parity = read_json(parity_file)

with st.form("export"):
    already = [v for v in VARIANTS if parity and v in (parity.get("variants") or {})]
    chosen = st.multiselect("Variants", VARIANTS, default=already or ["fp32", "int8"],
                            help="\n\n".join(f"**{v}**: {h}" for v, h in VARIANT_HELP.items()))
    submitted = st.form_submit_button("Export and check parity", type="primary")
job = export_job_state(run.path)
if submitted:
    try:
        job = start_export_job(run.path, chosen or ["fp32"])
    except UserError as exc:
        st.error(str(exc))

if job and job.get("state") == "running":
    # The export runs as its own process (about a minute at 224 px with every variant); watch it.
    @st.fragment(run_every=2)
    def _watch_export():
        current = export_job_state(run.path)
        if not current or current.get("state") != "running":
            st.rerun()
        elapsed = time.time() - current.get("started_at", time.time())
        st.info(f"Exporting {', '.join(current['variants'])}: {export_progress(run.path) or 'starting'} "
                f"({elapsed:.0f} s)")

    _watch_export()
    st.stop()
if job and job.get("state") == "failed":
    st.error(f"The last export did not finish: {job.get('error') or 'see export/export.log'}")
parity = read_json(parity_file)

if parity is None:
    fu = follow_up(run) or {}
    if fu.get("state") == "running":
        # Right after training: the run's own export follows its evaluation in the background.
        @st.fragment(run_every=2)
        def _filling_in() -> None:
            now = follow_up(run) or {}
            if now.get("state") != "running":
                st.rerun()
            st.info(f"Filling in: {now.get('message')} …", icon=":material/hourglass_top:")

        _filling_in()
        st.stop()
    st.info("This run has not been exported yet.")
    st.stop()

failure = gate_failure(parity)
if failure:
    st.error(
        f"**Download blocked.** {failure}. The fp32 model must give the same top-1 class as PyTorch on every "
        f"validation image, with logits within {parity.get('tolerance', 1e-3):g}; otherwise the file would not "
        "behave like the model you evaluated. Re-export; if it keeps failing, the backbone uses an operation the "
        "exporter does not translate faithfully."
    )

variants = parity.get("variants") or {}
fp32 = variants.get("fp32", {})
c1, c2, c3, c4 = st.columns(4)
c1.metric("fp32 top-1 agreement", f"{100 * parity.get('top1_agreement', 0):.2f}%")
c2.metric("fp32 max |logit diff|", f"{parity.get('max_abs_logit_diff', float('nan')):.1e}")
c3.metric("Validation images checked", parity.get("images", 0))
temperature = parity.get("temperature") or {}
c4.metric("Temperature", f"{temperature.get('temperature', 1.0):.3g}",
          help="Probabilities are softmax(logits / temperature). " + (
              f"Fitted on {temperature['images']} validation images: NLL {temperature['nll_before']:.3f} → "
              f"{temperature['nll_after']:.3f}, ECE {temperature['ece_before']:.3f} → {temperature['ece_after']:.3f}."
              if temperature.get("fitted") else temperature.get("reason", "not fitted")))

table = pd.DataFrame(parity_rows(parity))
st.subheader("Parity per variant")
st.dataframe(table, hide_index=True, width="stretch")
st.download_button("Download parity table (CSV)", table.to_csv(index=False), file_name=f"{run.id}-parity.csv",
                   mime="text/csv", on_click="ignore")

choices = pd.DataFrame(quantization_choices(parity))
if not choices.empty:
    st.subheader("int8: what each choice costs")
    st.caption((variants["int8"].get("quantization") or {}).get("selection", "") + ". Validation accuracy is "
               "shown for every choice but never used to pick one.")
    st.dataframe(choices, hide_index=True, width="stretch", key="int8_choices")
    st.download_button("Download int8 choices (CSV)", choices.to_csv(index=False),
                       file_name=f"{run.id}-int8-choices.csv", mime="text/csv", key="dl-int8-choices",
                       on_click="ignore")

for v, r in variants.items():
    flips = r.get("flipped") or []
    if not flips:
        continue
    with st.expander(f"{v}: {len(flips)} image(s) whose top-1 changed"):
        by_class = pd.DataFrame([{"true class": c, "images flipped": len(p)}
                                 for c, p in (r.get("flipped_by_class") or {}).items()])
        st.dataframe(by_class.sort_values("images flipped", ascending=False), hide_index=True)
        st.dataframe(pd.DataFrame(flips), hide_index=True)

if failure:
    st.stop()

st.subheader("Download")
ready = unchanged_variants(run, parity)
changed = [v for v in VARIANTS if v in variants and v not in ready]
if changed:
    st.warning(f"{', '.join(changed)} changed on disk after the parity check; re-export to download them.")
if "fp32" in changed:
    st.stop()
bundle_variants = st.multiselect("Models in the bundle", ready, default=ready)


def _bundle_bytes() -> bytes:
    return build_bundle(run.path, bundle_variants).read_bytes()


# on_click="ignore": no rerun on a download. A rerun while the browser fetches a deferred file (the
# bundle is built on click) let another session's clean-up drop it ("Deferred file not found", 8 sessions).
st.download_button("Download bundle (.zip): models, labels, preprocessing, model card, predict.py", _bundle_bytes,
                   file_name=f"transfer-studio-{run.id}.zip", mime="application/zip", type="primary",
                   on_click="ignore")
cols = st.columns(max(1, len(ready)))
for col, v in zip(cols, ready):
    path = variant_path(run, v)
    col.download_button(f"{path.name}", path.read_bytes, file_name=path.name, mime="application/octet-stream",
                        key=f"dl-{v}", help=VARIANT_HELP[v], on_click="ignore")
strict_note = ", ".join(STRICT_VARIANTS)
st.caption(f"{strict_note} must match PyTorch exactly (gate); fp16 and int8 report their accuracy change and "
           "you decide.")
