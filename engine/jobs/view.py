"""Read-only views of runs that the pages show: a one-line label,
which runs can predict, and a sensible image size to suggest before training.
"""
from __future__ import annotations

from engine.data.builtin import BUILTIN_DATASETS
from engine.models import get_spec
from engine.runs.run_dir import Run, list_runs

__all__ = ["run_label", "exported_runs", "suggest_image_size", "CPU_IMAGE_SIZE", "DEFAULT_BACKBONE"]

# The backbone a new session starts with (the Backbone page changes it); ``setup`` prepares its feature graph.
DEFAULT_BACKBONE = "mobilenet_v2"

# On CPU, compute grows with the square of the side: 96 px costs about a fifth of 224 px.
CPU_IMAGE_SIZE = {"builtin": 96, "folder": 128}


def run_label(run: Run) -> str:
    """``id · backbone mode · state · acc 0.91`` for pickers and the sidebar."""
    parts = [run.id]
    try:
        cfg = run.config()
        parts.append(f"{cfg.get('backbone')} {cfg.get('mode')}")
    except Exception:  # a half-created run folder
        pass
    parts.append(run.status().get("state", "unknown"))
    evaluation = run.evaluation()
    if evaluation and "accuracy" in evaluation:
        parts.append(f"acc {evaluation['accuracy']:.3f}")
    return " · ".join(parts)


def exported_runs() -> list[Run]:
    """Runs that have an ONNX model to predict with, newest first."""
    return [run for run in list_runs() if run.onnx_file.is_file()]


def suggest_image_size(backbone: str, dataset: str, has_gpu: bool | None = None) -> tuple[int, str]:
    """A training image size and the reason for it, shown beside the input."""
    native = get_spec(backbone).input_size
    if has_gpu is None:
        import torch

        has_gpu = torch.cuda.is_available()
    if has_gpu:
        return native, f"{native} px: the size {backbone} was pretrained at (best accuracy; a GPU makes it affordable)"
    if dataset in BUILTIN_DATASETS:
        size = min(native, CPU_IMAGE_SIZE["builtin"])
        return size, (f"{size} px: the built-in images are tiny (28 px or less), so {native} px adds no detail, "
                      f"and on CPU {size} px trains about {(native / size) ** 2:.0f}x faster")
    size = min(native, CPU_IMAGE_SIZE["folder"])
    return size, (f"{size} px: no GPU here, and {size} px trains about {(native / size) ** 2:.0f}x faster than "
                  f"the native {native} px; raise it for fine detail")
