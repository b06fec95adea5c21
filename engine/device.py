"""Where a computation runs (ground floor): the torch device with its autocast and memory-format choices,
and onnxruntime's threads per session. Training, feature extraction, latency measurement and inference
all take these from here."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from engine.errors import UserError

__all__ = ["DeviceSetup", "resolve_device", "ort_threads"]


@dataclass
class DeviceSetup:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def needs_scaler(self) -> bool:
        return self.amp_dtype == torch.float16 and self.device.type == "cuda"


def resolve_device(device: str = "auto", amp: str = "auto", channels_last: bool | None = None) -> DeviceSetup:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no GPU is visible; use --device cpu")
    if amp == "auto":
        if dev.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            amp = "off"  # bf16 on CPUs without AMX is slower than fp32
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    if channels_last is None:
        channels_last = dev.type == "cuda"
    return DeviceSetup(dev, amp_dtype, channels_last)


def ort_threads() -> int:
    """Threads per onnxruntime session.

    Several users share one server; each session using every core would
    oversubscribe the CPU. ``TS_ORT_THREADS`` overrides.
    """
    if "TS_ORT_THREADS" in os.environ:
        try:
            return max(1, int(os.environ["TS_ORT_THREADS"]))
        except ValueError:
            raise UserError(f"TS_ORT_THREADS must be a whole number, got {os.environ['TS_ORT_THREADS']!r}") from None
    return max(1, min(4, (os.cpu_count() or 2)))
