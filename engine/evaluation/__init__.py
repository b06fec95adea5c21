"""Evaluation of a finished run: where and why the model fails, computed once and stored with the run.

``engine.evaluation.evaluator``  compute: score the best weights, write the evaluation
``engine.evaluation.store``      where it is kept, reading it back (cached), staleness, temperature, OOD reference
``engine.evaluation.explain``    on demand: Grad-CAM of one image, two runs compared
"""
from engine.evaluation.calibration import fit_temperature, reliability, softmax
from engine.evaluation.curves import overfitting, threshold_curve, threshold_point
from engine.evaluation.evaluator import evaluate_run
from engine.evaluation.explain import activation_maps, compare_runs
from engine.evaluation.metrics import bootstrap_ci
from engine.evaluation.ood import OODReference, load_reference
from engine.evaluation.store import (RunEvaluation, evaluation_dir, load_evaluation, run_ood_reference,
                                     run_temperature)

__all__ = [
    "RunEvaluation",
    "OODReference",
    "activation_maps",
    "bootstrap_ci",
    "compare_runs",
    "evaluate_run",
    "evaluation_dir",
    "fit_temperature",
    "load_evaluation",
    "load_reference",
    "overfitting",
    "reliability",
    "run_ood_reference",
    "run_temperature",
    "softmax",
    "threshold_curve",
    "threshold_point",
]
