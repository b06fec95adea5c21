"""Evaluation of a finished run: where and why the model fails, computed once and stored with the run."""
from engine.evaluation.calibration import fit_temperature, reliability, softmax
from engine.evaluation.curves import overfitting, threshold_curve, threshold_point
from engine.evaluation.evaluator import (
    RunEvaluation,
    activation_maps,
    compare_runs,
    evaluate_run,
    evaluation_dir,
    load_evaluation,
    run_ood_reference,
    run_temperature,
)
from engine.evaluation.metrics import bootstrap_ci
from engine.evaluation.ood import OODReference, load_reference

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
