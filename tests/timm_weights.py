"""Random-initialisation weights for the small timm backbone, saved the way an operator supplies a file.

The same seed gives the same file, hence the same weights identity: the ONNX export
and the measured latency of the first test that installs them serve the later ones.
"""
from __future__ import annotations

from pathlib import Path

import torch

TIMM_SMALL = "mobilenetv4_small"


def random_timm_state(name: str = TIMM_SMALL, seed: int = 1) -> dict[str, torch.Tensor]:
    import timm

    from engine.models import get_spec

    torch.manual_seed(seed)
    return timm.create_model(str(get_spec(name).weights), pretrained=False).state_dict()


def supply_random_timm_weights(folder: Path, name: str = TIMM_SMALL) -> dict[str, torch.Tensor]:
    """Install seeded random weights for ``name`` (TS_WEIGHTS_DIR must point at the weights folder)."""
    from safetensors.torch import save_file

    from engine.models.supplied import install_weights

    state = random_timm_state(name)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / f"{name}-random.safetensors"))
    install_weights(name, folder / f"{name}-random.safetensors")
    return state
