"""What a fine-tune checkpoint must hold to resume exactly: one object with state_dict()/load_state_dict().

Epoch, optimizer, scheduler, grad scaler, early-stopping counters and the RNG
streams the loop draws from (torch's global one, used by TrivialAugment; the
batch-order and augmentation generators; CUDA's). NumPy's global RNG is not
drawn from while training, so it is not saved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.training.callbacks import Callback

__all__ = ["EarlyStopping", "TrainingState", "warmup_cosine"]


class EarlyStopping(Callback):
    """Tracks the best validation loss; ``stop`` after ``patience`` epochs without a better one."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best_loss = math.inf
        self.bad_epochs = 0

    def update(self, val_loss: float, epochs: int = 1) -> bool:
        """Record a validation loss, ``epochs`` epochs after the previous one (``val_every`` may skip
        epochs: patience stays in epochs); True when it is the best so far."""
        if val_loss < self.best_loss:
            self.best_loss, self.bad_epochs = val_loss, 0
            return True
        self.bad_epochs += epochs
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.bad_epochs = float(state["best_loss"]), int(state["bad_epochs"])


@dataclass
class TrainingState:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator
    aug_generator: torch.Generator
    early: EarlyStopping
    epoch: int = 0  # the last finished epoch
    extra: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
               "aug_generator": self.aug_generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"epoch": self.epoch, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "early_stopping": self.early.state_dict(), "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.early.load_state_dict(state["early_stopping"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        self.aug_generator.set_state(rng["aug_generator"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate per step: linear warm-up over ``warmup_steps``, then a cosine to zero at ``total_steps``
    (a function of the step alone, so the scheduler's state in last.pt resumes it exactly)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
