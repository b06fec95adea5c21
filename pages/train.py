"""Train page: configure a run, queue it, and watch it train, live.

The run trains in a worker process (engine.workflow queues it); this page only writes the
run's config, submits it, and reads the run directory back every second, so a
refresh or another page never stops it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from engine.runs import TERMINAL_STATES
from engine.data.images import ImageProblem
from engine.errors import UserError
from engine.settings.limits import training_ceilings
from engine.jobs.view import suggest_image_size
from engine.training.augment import AUGMENT_PRESETS
from engine.insight import load_insight
from engine.training.config import BALANCE_MODES, DEFAULT_EPOCHS, DEFAULT_LR, MIX_MODES, MODES, TrainConfig
from engine.training.lr_finder import LR_RANGE
from engine.workflow import (cancel_run, failure_details, follow_up, lr_find_state, queue_run, queue_view, resume_run,
                             start_lr_find)
from app.state import current_backbone, current_dataset, current_run, set_run, require_frame

require_frame()  # a deep link on a fresh server runs through the frame

MODE_LABELS = {"linear": "Linear probe", "partial": "Partial fine-tune", "gradual": "Gradual unfreezing",
               "full": "Full fine-tune", "scratch": "From scratch"}
MODE_HELP = {
    "linear": "a logistic-regression head fitted to convergence on cached features; seconds",
    "partial": "head + the last backbone stages",
    "gradual": "head first, then one more stage each epoch",
    "full": "every layer; best with more data and a GPU",
    "scratch": "random init, no pretraining: the baseline transfer must beat",
}
# Material icons, not emoji: they render without an emoji font on the server's viewers.
STATE_ICONS = {"queued": ":material/hourglass_top:", "running": ":material/sync:", "done": ":material/check_circle:",
               "failed": ":material/error:", "cancelled": ":material/cancel:", "interrupted": ":material/warning:",
               "unknown": ":material/help:"}

st.title("Train")
dataset = current_dataset()
backbone = current_backbone()
dataset_name = Path(dataset).name if "/" in str(dataset) else dataset
st.caption(f"Dataset **{dataset_name}** · backbone **{backbone}** (change them on the Dataset and Backbone pages)")
_insight = load_insight(dataset, backbone)  # advice from the Insight page's measurements, when there are some
if _insight:
    st.info("**Insight:** " + " ".join(_insight["advice"]), icon=":material/lightbulb:")


def _fmt_seconds(seconds) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# ---------------------------------------------------------------- settings
with st.container(border=True):
    mode = st.radio("Training mode", MODES, format_func=lambda m: MODE_LABELS.get(m, m), horizontal=True,
                    captions=[MODE_HELP.get(m, "") for m in MODES], key="train_mode")
    c1, c2, c3, c4, c5 = st.columns(5)
    # Keyed per mode so switching mode brings up that mode's defaults.
    probe = mode == "linear"  # fitted to convergence: no epochs, no learning rate
    most_epochs, largest_size = training_ceilings(epochs=1000, image_size=512)  # hosted ceilings, if lower
    epochs = c1.number_input("Epochs", 1, most_epochs, min(DEFAULT_EPOCHS[mode], most_epochs),
                             key=f"train_epochs_{mode}", disabled=probe,
                             help="the linear probe is one converged fit" if probe
                             else TrainConfig.field_help("epochs"))
    lr = c2.number_input("Learning rate", *LR_RANGE, DEFAULT_LR[mode], format="%.0e", step=1e-4,
                         key=f"train_lr_{mode}", disabled=probe,
                         help="the probe's regularisation is chosen by cross-validation" if probe
                         else TrainConfig.field_help("lr"))
    try:
        suggested, why = suggest_image_size(backbone, dataset)
    except UserError as exc:  # an unknown backbone named in the URL
        suggested, why = 96, str(exc)
    # Keyed by backbone and dataset so a new pick brings up its own suggestion.
    image_size = c3.number_input("Image size (px)", 32, largest_size, min(suggested, largest_size), step=16,
                                 help=why, key=f"train_size_{backbone}_{dataset}")
    batch_size = c4.selectbox("Batch size", [8, 16, 32, 64, 128], index=2, key="train_batch")
    augment = c5.selectbox("Augmentation", list(AUGMENT_PRESETS), index=list(AUGMENT_PRESETS).index("light"),
                           key="train_augment", disabled=mode == "linear",
                           help="a linear probe computes features once, without augmentation")
    st.caption(f"Suggested image size {why}.")
    val_fraction = float(st.session_state.get("val_fraction", 0.2))
    with st.expander("Advanced: class balance, early stopping, layer-wise LR, mixup, seed"):
        balance = st.radio("Class imbalance", BALANCE_MODES, horizontal=True, key="train_balance",
                           index=BALANCE_MODES.index(TrainConfig.field_default("balance")),
                           help=TrainConfig.field_help("balance") + ". The results show accuracy and balanced "
                           "accuracy, and what a prior correction at prediction time would do to both.")
        a1, a2, a3, a4 = st.columns(4)
        patience = a1.number_input("Early-stopping patience (0 = off)", 0, 100, 0, key="train_patience",
                                   help="stop after this many epochs without a better validation loss; "
                                        "the best checkpoint is kept either way")
        layer_decay = a2.number_input("Layer-wise LR decay", 0.05, 1.0, TrainConfig.field_default("layer_decay"),
                                      step=0.05, key="train_layer_decay", help=TrainConfig.field_help("layer_decay"))
        mix = a3.selectbox("Mixup / CutMix", MIX_MODES, key="train_mix", disabled=mode == "linear")
        seed = a4.number_input("Seed", 0, 2**31 - 1, 0, key="train_seed",
                               help="the same settings and seed give the same run on the same hardware")
        unfreeze = st.slider("Partial fine-tune: backbone stages to train", 1, 12, 3, key="train_unfreeze",
                             disabled=mode != "partial")
        st.caption(f"Validation fraction {val_fraction:.2f} (set on the Dataset page; used when the data has "
                   "no train/val split).")
    b1, b2 = st.columns([1, 4])
    start = b1.button("Start training", type="primary", icon=":material/play_arrow:")
    find = b2.button("Find a learning rate", icon=":material/query_stats:", disabled=probe,
                     help="the linear probe has no learning rate" if probe else
                     "a short sweep (fastai's LR finder) on these settings; takes about a minute on CPU")


def _config() -> TrainConfig:
    return TrainConfig(dataset=str(dataset), backbone=backbone, mode=mode, epochs=int(epochs), lr=float(lr),
                       batch_size=int(batch_size), image_size=int(image_size), augment=augment,
                       val_fraction=val_fraction, patience=int(patience) or None, layer_decay=float(layer_decay),
                       mix=mix if mode != "linear" else "none", seed=int(seed), unfreeze_stages=int(unfreeze),
                       balance=balance)


def _start_run():
    """Check everything the user can fix here (weights, dataset), then queue the run."""
    with st.spinner("Checking the dataset…"):
        return queue_run(_config())


def _use_lr(value: float) -> None:
    # One significant digit: the widget shows 1e-03-style values.
    st.session_state[f"train_lr_{mode}"] = float(f"{value:.0e}")


def _lr_finder_view() -> None:
    """The sweep for the current settings: start it, watch it, use its suggestion."""
    try:
        settings = _config()
    except UserError:
        return
    if find:
        try:
            start_lr_find(settings)
        except UserError as exc:
            st.error(f"Cannot run the LR finder: {exc}")
            return
    task, _ = lr_find_state(settings)
    if task is None:
        return

    @st.fragment(run_every="1s" if task["state"] == "running" else None)
    def sweep() -> None:
        now, result = lr_find_state(settings)
        if task["state"] == "running" and now["state"] != "running":
            st.rerun()  # once: the full page redraws without polling
        if now["state"] == "running":
            st.info("LR finder running in the background…", icon=":material/hourglass_top:")
            return
        if now["state"] == "failed" or result is None:
            st.error(f"The LR finder failed: {now.get('error') or 'it stored no curve'}")
            return
        fig = px.line(x=result["lrs"], y=result["losses"], log_x=True, title="LR finder (smoothed training loss)",
                      labels={"x": "learning rate", "y": "loss"})
        fig.add_vline(x=result["suggested_lr"], line_dash="dash", line_color="#f97316",
                      annotation_text=f"suggested {result['suggested_lr']:.1e}")
        fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10))
        st.plotly_chart(fig, width="stretch", key="lr_finder_curve")
        st.button(f"Use {result['suggested_lr']:.0e} as the learning rate", on_click=_use_lr,
                  args=(result["suggested_lr"],), key="use_suggested_lr")

    sweep()


_lr_finder_view()

if start:
    try:
        started = _start_run()
    except (UserError, ImageProblem) as exc:
        st.error(f"Cannot start training: {exc}")
    else:
        set_run(started)
        st.rerun()  # redraw the sidebar and the run view with the new run

# ---------------------------------------------------------------- the run
run = current_run()
if run is None:
    st.info("No run yet. Choose the settings above and press **Start training**.")
    st.stop()

config = run.config()
head_l, head_r = st.columns([4, 1])
head_l.subheader(f"Run `{run.id}`")
head_l.caption(f"{config.get('backbone')} · {MODE_LABELS.get(config.get('mode'), config.get('mode'))} · "
               f"{config.get('epochs')} epochs · lr {config.get('lr')} · {config.get('image_size')} px · "
               f"batch {config.get('batch_size')} · dataset {Path(str(config.get('dataset'))).name}")
state_now = run.status().get("state")
settled = state_now in TERMINAL_STATES  # from the same read: the fragment below reruns on any change
if not settled and state_now in ("queued", "running"):
    if head_r.button("Cancel run", icon=":material/stop:", key="cancel_run"):
        cancel_run(run)
        st.toast("Cancel requested; the run stops at its next step.")
elif settled and state_now in ("interrupted", "cancelled", "failed") and run.last_checkpoint.is_file():
    if head_r.button("Resume run", icon=":material/replay:", key="resume_run",
                     help="continue from the last finished epoch"):
        try:
            resume_run(run)
        except UserError as exc:
            st.error(f"Cannot resume: {exc}")
        else:
            st.rerun()


def _curves(metrics: list[dict]) -> tuple[go.Figure, go.Figure]:
    frame = pd.DataFrame(metrics)
    figures = []
    for what, title in (("loss", "Loss"), ("acc", "Accuracy")):
        # Validation may skip epochs (val_every), so its column can be missing early in a run.
        present = [c for c in (f"train_{what}", f"val_{what}") if c in frame]
        long = frame.melt(id_vars="epoch", value_vars=present, var_name="split", value_name=what).dropna()
        long["split"] = long["split"].str.replace(f"_{what}", "", regex=False)
        fig = px.line(long, x="epoch", y=what, color="split", markers=True, title=title,
                      color_discrete_map={"train": "#2563eb", "val": "#f97316"})
        fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), legend_title_text="")
        if what == "acc":
            fig.update_yaxes(range=[0, 1.02])
        figures.append(fig)
    return figures[0], figures[1]


def _probe_curve(probe: dict) -> tuple[go.Figure, pd.DataFrame]:
    """A linear probe has no epochs: what it has is the cross-validated score over the regularisation C."""
    table = pd.DataFrame(probe.get("cv") or [])
    fig = px.line(table, x="C", y="cv_score", color="scaling", markers=True, log_x=True,
                  title="Cross-validation over the regularisation (higher C: weaker)",
                  labels={"cv_score": "cross-validated score", "C": "C"})
    if probe.get("C") is not None:
        fig.add_vline(x=probe["C"], line_dash="dash", line_color="#f97316", annotation_text=f"chosen C={probe['C']:g}")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), legend_title_text="")
    return fig, table


def _draw_status(status: dict) -> None:
    state = status.get("state", "unknown")
    stage = status.get("stage") or ""
    message = status.get("message") or ""
    st.markdown(f"**State:** {STATE_ICONS.get(state, '')} `{state}` · **stage:** {stage}"
                + (f" — {message}" if message and message != stage and state in ("running", "queued") else ""))
    if state == "queued":
        position = queue_view(run)  # cheap; it also restarts the queue if its dispatcher died
        if position:
            st.info(f"Waiting in the queue: position {position}. It starts when a worker is free.")
    progress = float(status.get("progress") or 0.0)
    if state == "running" and stage not in ("train", "export", "evaluate") and status.get("stage_progress"):
        st.progress(float(status["stage_progress"]), text=f"{stage}: {status.get('step')}/{status.get('steps')}")
    epochs_total = status.get("epochs") or config.get("epochs")
    text = f"epoch {status.get('epoch', 0)}/{epochs_total}"
    if stage == "train" and status.get("steps"):
        text += f" · step {status.get('step')}/{status.get('steps')}"
    if state == "running":
        text += f" · ETA {_fmt_seconds(status.get('eta_s'))}"
    elif status.get("duration_s"):
        text += f" · took {_fmt_seconds(status['duration_s'])}"
    st.progress(min(max(progress, 0.0), 1.0), text=text)
    if state == "failed":
        st.error(f"Training failed: {status.get('error') or 'no reason recorded'}")
    elif state == "interrupted":
        st.warning(f"Training was interrupted: {status.get('error') or 'the worker stopped'}")
    elif state == "cancelled":
        st.info(f"Cancelled: {status.get('message') or 'stopped by a user'}")


# Decided once per full run: a settled run is drawn once; a running one polls every second, a queued one
# (which changes only when it starts) every 3 s, so a queue of visitors does not load the server.
@st.fragment(run_every=None if settled else "1s" if state_now == "running" else "3s")
def live_view() -> None:
    status = run.status()
    if not settled and status.get("state") != state_now:
        st.rerun()  # once per change: queued -> running polls faster; a finished run redraws with its evaluation
    _draw_status(status)
    metrics = run.metrics()
    probe = metrics[-1].get("probe") if metrics else None
    if probe and probe.get("cv"):
        fig, table = _probe_curve(probe)
        left, right = st.columns([3, 2])
        left.plotly_chart(fig, width="stretch", key="probe_cv_curve")
        right.dataframe(table, hide_index=True, width="stretch")
        right.caption(f"chosen: C={probe['C']:g}, {probe['scaling']} features; cross-validated score "
                      f"{probe.get('cv_accuracy') or float('nan'):.3f}")
    elif probe:
        st.caption("The probe was fitted without cross-validation (too few images per class for folds).")
    elif metrics:
        loss_fig, acc_fig = _curves(metrics)
        left, right = st.columns(2)
        left.plotly_chart(loss_fig, width="stretch", key="loss_curve")
        right.plotly_chart(acc_fig, width="stretch", key="acc_curve")
    elif status.get("state") in ("queued", "running"):
        st.caption("Curves appear after the first epoch.")


live_view()

if not settled:
    st.stop()

status = run.status()
if status.get("state") == "failed":
    details = failure_details(run)
    if details:
        with st.expander("Technical details (for a bug report)"):
            st.code(details, language="text")

evaluation = run.evaluation()
if evaluation is None:
    st.stop()

split_name = "held-out test" if evaluation.get("split") == "test" else "validation"
st.subheader(f"Evaluation on the {split_name} split (best epoch)")
m1, m2, m3, m4, m5 = st.columns(5)
m1.metric("Accuracy", f"{evaluation['accuracy']:.3f}")
m2.metric("Balanced accuracy", f"{evaluation.get('balanced_accuracy', float('nan')):.3f}",
          help="the mean of per-class recalls: what accuracy would be if every class were equally common")
m3.metric("Macro F1", f"{evaluation['macro_f1']:.3f}")
m4.metric("Best epoch", evaluation.get("best_epoch", "—"))
m5.metric(f"{split_name.capitalize()} images", evaluation.get("num_images", "—"))
if evaluation.get("prior_correction"):
    pc = evaluation["prior_correction"]
    st.caption("The classes are imbalanced. Correcting for the training class frequencies at prediction time "
               "(logit adjustment) trades one metric for the other; the Evaluate page has the detail.")
    st.dataframe(pd.DataFrame([{"predictions": name, **{k: round(v, 4) for k, v in pc[key].items()}}
                               for name, key in (("as trained", "as_trained"),
                                                 ("prior-corrected", "prior_corrected"))]),
                 hide_index=True)

classes = evaluation["classes"]
left, right = st.columns([3, 2])
with left:
    cm = pd.DataFrame(evaluation["confusion_matrix"], index=classes, columns=classes)
    fig = px.imshow(cm, text_auto=True, color_continuous_scale="Blues", aspect="auto",
                    labels={"x": "predicted", "y": "true", "color": "images"}, title="Confusion matrix")
    fig.update_layout(height=max(360, 40 * len(classes) + 120), margin=dict(l=10, r=10, t=40, b=10))
    st.plotly_chart(fig, width="stretch", key="confusion_matrix")
with right:
    per_class = pd.DataFrame(evaluation["per_class"])
    st.dataframe(per_class, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("precision", "recall", "f1")})
    st.download_button("Download per-class table (CSV)", per_class.to_csv(index=False),
                       f"{run.id}-per-class.csv", "text/csv", on_click="ignore")

# The evaluation's intervals and the ONNX export follow "done" in the background: watch them here.
following = (follow_up(run) or {}).get("state") == "running"


@st.fragment(run_every="2s" if following else None)
def follow_up_view() -> None:
    fu = follow_up(run) or {}
    if following and fu.get("state") != "running":
        st.rerun()  # once: the page redraws with the export's outcome
    if fu.get("state") == "running":
        st.info(f"Filling in: {fu.get('message') or fu.get('stage')}… the figures above are final; the Evaluate "
                "and Export pages fill in when this ends.", icon=":material/hourglass_top:")
        return
    if fu.get("state") == "stopped":
        st.warning(fu["error"])
    export = run.status().get("export") or {}
    if run.onnx_file.is_file() and export.get("passed", True):
        st.success("Exported to ONNX and checked against PyTorch. Try it on the **Predict** page or download it "
                   "on the **Export** page.")
    elif export.get("error") or export.get("passed") is False:
        st.warning("Training finished but the ONNX export did not pass: "
                   f"{export.get('error') or 'parity check failed'}")


follow_up_view()
