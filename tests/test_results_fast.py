"""A linear probe's evaluation reads the frozen features training cached: the same predictions, no decoding."""
from __future__ import annotations

import numpy as np

from engine.evaluation import evaluate_run, load_evaluation


def test_probe_evaluation_from_cached_features_matches_training(trained_run, monkeypatch):
    import engine.data.tensors as tensors

    def no_decoding(*args, **kwargs):
        raise AssertionError("a probe's evaluation decoded images")

    monkeypatch.setattr(tensors, "decode_split", no_decoding)
    monkeypatch.setattr(tensors, "iter_decoded", no_decoding)
    summary = evaluate_run(trained_run.path, n_resamples=200)
    stored = load_evaluation(trained_run.path)
    assert stored is not None
    at_training = trained_run.evaluation()  # eval.json, from the predictions training made
    assert stored.predictions["path"].tolist() == at_training["paths"]
    np.testing.assert_array_equal(stored.predictions["pred"].to_numpy(), np.array(at_training["y_pred"]))
    assert summary["accuracy"] == at_training["accuracy"]
    assert summary["train_images"] > 0 and summary["ood"]
