"""The torch.compile path of the loop, on CPU, with a tiny backbone so compiling takes seconds.

A real registry backbone compiles in about 100 s on this CPU, too slow for the
suite; the wrapping, the compiled training step and the checkpoint of the
underlying module are the same code whatever the backbone.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from engine.models import TransferModel
from engine.training.config import TrainConfig
from engine.training.distributed import DistContext
from engine.device import resolve_device
from engine.training.loop import LoopState, evaluate, train_one_epoch
from engine.training.runner import _wrap

pytestmark = pytest.mark.slow  # torch.compile takes half a minute even on the tiny backbone


def _tiny_model() -> TransferModel:
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return TransferModel(backbone, feature_dim=8, num_classes=2, dropout=0.0)


def test_compiled_model_trains_and_matches_its_eager_module():
    torch.manual_seed(0)
    # Bright vs dark images: learnable in a few steps.
    images = torch.cat([torch.full((16, 3, 16, 16), 200, dtype=torch.uint8),
                        torch.full((16, 3, 16, 16), 30, dtype=torch.uint8)])
    images = (images.int() + torch.randint(-20, 21, images.shape)).clamp(0, 255).to(torch.uint8)
    labels = torch.tensor([0] * 16 + [1] * 16)
    model = _tiny_model()
    config = TrainConfig(dataset="unused", mode="full", compile=True)
    setup = resolve_device("cpu", "off", False)
    net = _wrap(model, config, setup, DistContext())
    assert net is not model and hasattr(net, "_orig_mod")  # really compiled
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    before = evaluate(model, images, labels, setup=setup, batch_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)
    state = LoopState(optimizer, None, nn.CrossEntropyLoss(), setup, (0.5,) * 3, (0.25,) * 3,
                      torch.Generator().manual_seed(0))
    for _ in range(4):
        stats = train_one_epoch(net, images, labels, replace(config, batch_size=8, augment="none"), state)
    after = evaluate(model, images, labels, setup=setup, batch_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert after["val_loss"] < before["val_loss"]
    assert after["val_acc"] == 1.0
    assert stats["train_acc"] > 0.5
    # The compiled module and the eager one it wraps share weights: checkpoints save the latter.
    net.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-4, atol=1e-5)
