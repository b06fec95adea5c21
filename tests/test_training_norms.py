"""Batch-norm policies of the fine-tune, the typed train state, the resolved record and the hard benchmark set."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.data.builtin import GARMENT_SIZE, _garment_scene
from engine.device import resolve_device
from engine.errors import UserError
from engine.models import create_model
from engine.runs import Resolved, Run
from engine.training.config import TrainConfig
from engine.training.freeze import adapt_batch_norm, apply_freeze_policy
from engine.training.loop import LoopState, backbone_features, clean_batches, train_one_epoch

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def _model():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 3, pretrained=False, image_size=32)
    apply_freeze_policy(model, "full")
    return model


def _first_norm_input(model, x: torch.Tensor) -> torch.Tensor:
    """What the backbone's first batch-norm layer sees: the first convolution's output."""
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    return conv(x)


def test_adapted_statistics_are_the_exact_average_over_the_training_images():
    model = _model()
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    setup = resolve_device("cpu", "off")
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    weights = [p.clone() for p in model.parameters()]
    momentum = bn.momentum
    # Two equal batches: their plain average is the mean over all images; the default moving average
    # (momentum 0.1, from the initial statistics) would not be.
    n = adapt_batch_norm(model, clean_batches(images, setup=setup, batch_size=10, mean=MEAN, std=STD))
    assert n > 10
    with torch.no_grad():
        x = torch.cat(list(clean_batches(images, setup=setup, batch_size=20, mean=MEAN, std=STD)))
        seen = _first_norm_input(model, x)
    torch.testing.assert_close(bn.running_mean, seen.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == momentum  # restored: the adapted statistics are the new starting point
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))  # only statistics moved


def test_features_after_adapting_differ_from_the_pretrained_ones():
    """The head warm-up must fit on the adapted backbone's features, not the cached pretrained ones."""
    model = _model()
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    setup = resolve_device("cpu", "off")
    before = backbone_features(model, images, setup=setup, batch_size=8, mean=MEAN, std=STD)
    adapt_batch_norm(model, clean_batches(images, setup=setup, batch_size=8, mean=MEAN, std=STD))
    after = backbone_features(model, images, setup=setup, batch_size=8, mean=MEAN, std=STD)
    assert before.shape == after.shape == (16, model.feature_dim)
    assert not torch.allclose(before, after, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize(("freeze_norm", "moves"), [(True, False), (False, True)])
def test_the_config_decides_whether_an_epoch_moves_the_statistics(freeze_norm, moves):
    model = _model()
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 3, (16,))
    config = TrainConfig(dataset="unused", mode="full", batch_size=8, augment="light", freeze_norm=freeze_norm)
    state = LoopState(torch.optim.AdamW(model.parameters(), lr=1e-3), None, torch.nn.CrossEntropyLoss(),
                      resolve_device("cpu", "off"), MEAN, STD, torch.Generator().manual_seed(0))
    stats = train_one_epoch(model, images, labels, config, state)
    assert np.isfinite(stats["train_loss"]) and 0 <= stats["train_acc"] <= 1
    assert (not torch.equal(before, bn.running_mean)) == moves


def test_resolved_is_read_typed_from_the_run(tmp_path):
    run = Run(tmp_path / "run")
    run.path.mkdir()
    run.write_config({"dataset": "x"})
    with pytest.raises(UserError, match="has not started"):
        run.resolved()
    record = Resolved(image_size=96, classes=["a", "b"], mean=[0.5] * 3, std=[0.25] * 3, num_train=10)
    run.write_config({"dataset": "x", "resolved": record.to_dict() | {"added_later": 1}})
    got = run.resolved()
    assert got == record and got.image_size == 96 and got.classes == ["a", "b"]


def test_garment_scenes_are_deterministic_large_and_greyscale():
    item = np.zeros((28, 28), dtype=np.uint8)
    item[6:22, 8:20] = 255
    texture = np.random.default_rng(0).integers(0, 256, (300, 300)).astype(np.uint8)
    a = _garment_scene(item, texture, np.random.default_rng(5))
    b = _garment_scene(item, texture, np.random.default_rng(5))
    c = _garment_scene(item, texture, np.random.default_rng(6))
    assert a.shape == (GARMENT_SIZE, GARMENT_SIZE) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
