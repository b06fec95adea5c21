"""The quick probe sweep: a few backbones probed on the user's data, accuracy against measured latency."""
from engine.sweep.sweep import (
    MAX_BACKBONES,
    MIN_BACKBONES,
    check_backbones,
    format_sweep,
    latest_sweep,
    pareto_front,
    recommend,
    run_sweep,
    sweep_folder,
)

__all__ = ["MAX_BACKBONES", "MIN_BACKBONES", "check_backbones", "format_sweep", "latest_sweep",
           "pareto_front", "recommend", "run_sweep", "sweep_folder"]
