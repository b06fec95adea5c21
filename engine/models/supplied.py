"""Weights files an operator or a user supplies for a registered architecture.

A file lives in :func:`weights_dir` as ``<backbone>.safetensors``. Before it is used
it is checked key by key and shape by shape against the architecture (its ImageNet
classifier may be absent: it is replaced anyway); the check is recorded beside it
(``<backbone>.json``, with the file's SHA-256, which names the weights in the feature
cache) and done again whenever the file changes. :func:`install_weights` takes a
``.safetensors`` file or a PyTorch state dict (read with ``weights_only=True``),
checks it and stores it there as safetensors.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from engine.errors import UserError
from engine.models.registry import get_spec
from engine.settings.profile import require_operator
from engine.workspace import atomic_path, file_sha256, home, read_json, write_json_atomic

__all__ = ["weights_dir", "supplied_file", "weights_identity", "check_state_dict", "read_state_dict",
           "install_weights", "verified_file"]

WEIGHTS_ENV = "TS_WEIGHTS_DIR"
MAX_LISTED = 3


def weights_dir() -> Path:
    """Where supplied weights live: ``$TS_WEIGHTS_DIR``, else ``$TRANSFER_STUDIO_HOME/weights``."""
    return Path(os.environ[WEIGHTS_ENV]) if os.environ.get(WEIGHTS_ENV) else home() / "weights"


def supplied_file(name: str) -> Path | None:
    path = weights_dir() / f"{name}.safetensors"
    return path if path.is_file() else None


def _record_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def weights_identity(name: str) -> str | None:
    """``sha256:<hex>`` of the supplied file of ``name`` (hashed once per file version), or None."""
    path = supplied_file(name)
    if path is None:
        return None
    record = read_json(_record_path(path)) or {}
    if record.get("stamp") != _stamp(path) or "sha256" not in record:
        record = {"stamp": _stamp(path), "sha256": file_sha256(path), "checked": False}
        _write_record(path, record)
    return f"sha256:{record['sha256']}"


def _write_record(path: Path, record: dict) -> None:
    try:
        write_json_atomic(_record_path(path), record)
    except OSError:  # a read-only weights folder: the check is simply redone next time
        pass


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """A safetensors file, or a PyTorch state dict read with ``weights_only=True`` (a checkpoint
    holding it under ``state_dict``/``model`` is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"'{path.name}' is not a readable safetensors file or PyTorch state dict "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(blob, Mapping) and isinstance(blob.get(key), Mapping):
            blob = blob[key]
    if not isinstance(blob, Mapping) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise UserError(f"'{path.name}' holds no state dict (a mapping of parameter names to tensors)")
    return dict(blob)


def _listed(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def reference_state_shapes(name: str) -> tuple[dict[str, tuple], set[str]]:
    """(parameter/buffer name -> shape, the ImageNet classifier's keys) of architecture ``name`` as
    its published weights have it (native input size, its classifier)."""
    spec = get_spec(name)
    if spec.family == "timm":
        from engine.models.timm_backbones import build_timm, timm_pretrained_cfg

        cfg = timm_pretrained_cfg(str(spec.weights))
        model = build_timm(str(spec.weights), False, None, num_classes=int(cfg.get("num_classes") or 0))
        heads = cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        optional = {f"{h}.{p}" for h in heads for p in ("weight", "bias")}
    else:
        if spec.family == "efficientnet_lite":
            from efficientnet_lite_pytorch import EfficientNet

            model = EfficientNet.from_name(spec.name.replace("_", "-"), image_size=spec.input_size)
        else:
            from torchvision.models import get_model

            model = get_model(spec.name, weights=None)
        last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
        optional = {f"{n}.{p}" for n in last for p in ("weight", "bias")}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return shapes, optional & set(shapes)


def check_state_dict(name: str, state: Mapping[str, torch.Tensor]) -> None:
    """Raise a one-line UserError unless ``state`` fits architecture ``name`` key by key and shape by shape."""

    expected, optional = reference_state_shapes(name)
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in got and k not in optional]
    unexpected = [k for k in got if k not in expected]
    wrong = [f"{k} {got[k]} vs {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({_listed(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) ({_listed(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es) ({'; '.join(wrong[:MAX_LISTED])})")
    if problems:
        raise UserError(f"these weights do not fit '{name}': " + ", ".join(problems))


def verified_file(name: str) -> Path | None:
    """The supplied file of ``name`` after its check (done once per file version), or None when there is none."""
    path = supplied_file(name)
    if path is None:
        return None
    weights_identity(name)  # brings the record up to date with the file
    record = read_json(_record_path(path)) or {}
    if not record.get("checked"):
        check_state_dict(name, read_state_dict(path))
        _write_record(path, record | {"checked": True})
    return path


def install_weights(name: str, source: Path | str) -> Path:
    """Check ``source`` against ``name``'s architecture and store it as ``weights_dir()/<name>.safetensors``."""
    from safetensors.torch import save_file


    require_operator("add backbone weights, which every workspace shares")
    get_spec(name)
    state = read_state_dict(source)
    check_state_dict(name, state)
    target = weights_dir() / f"{name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    _write_record(target, {"stamp": _stamp(target), "sha256": file_sha256(target), "checked": True,
                           "source": Path(source).name})
    return target
