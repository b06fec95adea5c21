"""The temperature an export records: the one the run's evaluation fitted.

Temperature scaling is fitted in one place, :func:`engine.evaluation.calibration.fit_temperature`,
and evaluation stores the result with the run. Exporting a run that has no evaluation of its
current weights fits it with that same function on the same validation logits.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.evaluation.calibration import MIN_TEMPERATURE_IMAGES, fit_temperature
from engine.evaluation.store import run_temperature

__all__ = ["fit_temperature", "export_temperature", "MIN_TEMPERATURE_IMAGES"]


def export_temperature(run_dir: Path | str, validation: Callable[[], tuple[np.ndarray, np.ndarray]]) -> dict:
    """The run's stored calibration, else one fitted now on ``validation()`` -> (logits, labels)."""
    stored = run_temperature(run_dir)
    if stored is not None:
        return stored | {"source": "the run's evaluation"}
    logits, labels = validation()
    return fit_temperature(logits, labels) | {"source": "fitted at export (run not evaluated yet)"}
