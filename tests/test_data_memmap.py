"""The decoded-image cache on disk: memory-mapped, written in chunks, bounded, streamed when too large."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.data.dataset import load_dataset
from engine.data.images import load_rgb, resize_center_crop
from engine.data.tensors import decode_split, decoded_bytes, decoded_cache_problem, iter_decoded
from engine.errors import UserError
from engine.features import split_features
from engine.device import resolve_device
from engine.training.config import TrainConfig
from engine.training.loop import LoopState, evaluate, train_one_epoch

from conftest import make_shapes_dataset

SIZE = 32


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return load_dataset(make_shapes_dataset(tmp_path_factory.mktemp("memmap") / "shapes", per_class=12))


def test_cache_is_a_memory_map_of_the_decoded_pixels(shapes):
    first = decode_split(shapes, "train", SIZE, shapes.classes)
    assert first.source is not None and first.source.stat().st_size == decoded_bytes(len(first), SIZE)
    assert isinstance(first.images, torch.Tensor) and first.images.dtype == torch.uint8
    assert first.images.untyped_storage().data_ptr() != 0 and first.images.shape == (len(first), 3, SIZE, SIZE)
    # The pixels are the images themselves, decoded as a single one would be.
    expected = resize_center_crop(load_rgb(shapes.root / first.paths[3]), SIZE)
    np.testing.assert_array_equal(first.images[3].permute(1, 2, 0).numpy(), expected)
    again = decode_split(shapes, "train", SIZE, shapes.classes)
    torch.testing.assert_close(again.images, first.images)
    assert again.paths == first.paths and torch.equal(again.labels, first.labels)
    # Batches read from the file are the same pixels as the map.
    joined = torch.cat(list(first.batches(5)))
    assert torch.equal(joined, first.images)


def test_chunks_match_the_cache_and_skip_broken_files(shapes, tmp_path):
    cached = decode_split(shapes, "val", SIZE, shapes.classes)
    chunks = list(iter_decoded(shapes, "val", SIZE, shapes.classes, chunk=4))
    assert len(chunks) == -(-len(cached) // 4)
    assert torch.equal(torch.cat([c.images for c in chunks]), cached.images)
    broken = shapes.root / cached.paths[0]
    original = broken.read_bytes()
    try:
        broken.write_bytes(b"not an image")
        streamed = list(iter_decoded(shapes, "val", SIZE, shapes.classes, chunk=4))
        assert sum(len(c) for c in streamed) == len(cached) - 1
        assert cached.paths[0] not in [p for c in streamed for p in c.paths]
    finally:
        broken.write_bytes(original)


def test_over_budget_is_refused_in_one_line_and_features_stream(shapes, monkeypatch):
    size = SIZE + 8  # nothing cached at this size yet
    monkeypatch.setenv("TS_DECODED_CACHE_GB", str(decoded_bytes(3, size) / 1e9))
    problem = decoded_cache_problem(shapes, "train", size)
    assert problem and "TS_DECODED_CACHE_GB" in problem
    with pytest.raises(UserError, match="lower the image size"):
        decode_split(shapes, "train", size, shapes.classes)
    streamed = split_features(shapes, "train", "mobilenet_v2", size, shapes.classes)
    assert not any(p.suffix == ".u8" and f"-train-{size}" in p.name for p in shapes_cache(shapes))
    monkeypatch.delenv("TS_DECODED_CACHE_GB")
    decoded = split_features(shapes, "val", "mobilenet_v2", size, shapes.classes)  # within budget: via the cache
    assert streamed.features.shape[0] == len(streamed.paths) == len(streamed.labels) > 0
    assert streamed.features.shape[1] == decoded.features.shape[1]


def shapes_cache(dataset):
    from engine.workspace import cache_dir

    return list(cache_dir().glob(f"{dataset.fingerprint()}-*"))


@pytest.mark.slow
def test_training_and_evaluation_read_batches_from_the_map(shapes):
    """The loop copies each batch to the device (here the CPU) with channels_last on, as on a GPU."""
    from engine.models import create_model

    train_t = decode_split(shapes, "train", SIZE, shapes.classes)
    val_t = decode_split(shapes, "val", SIZE, shapes.classes)
    setup = resolve_device("cpu", "off", channels_last=True)
    model = create_model("mobilenet_v2", len(shapes.classes), pretrained=False, image_size=SIZE)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    state = LoopState(optimizer, None, torch.nn.CrossEntropyLoss(), setup, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                      torch.Generator().manual_seed(0))
    config = TrainConfig(dataset="unused", mode="full", batch_size=8, augment="light")
    stats = train_one_epoch(model, train_t.images, train_t.labels, config, state, max_steps=2)
    assert np.isfinite(stats["train_loss"])
    out = evaluate(model, val_t.images, val_t.labels, setup=setup, batch_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert out["logits"].shape == (len(val_t), len(shapes.classes))
