"""What a training run is asked to do; saved as config.json and in every checkpoint."""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields

from engine.errors import UserError

__all__ = ["TrainConfig", "MODES", "MIX_MODES", "BALANCE_MODES", "DEFAULT_EPOCHS", "DEFAULT_LR"]

MODES = ("linear", "partial", "gradual", "full", "scratch")
DEFAULT_EPOCHS = {"linear": 1, "partial": 5, "gradual": 6, "full": 5, "scratch": 5}
DEFAULT_LR = {"linear": 3e-3, "partial": 1e-3, "gradual": 1e-3, "full": 1e-3, "scratch": 3e-3}
MIX_MODES = ("none", "mixup", "cutmix", "both")
BALANCE_MODES = ("none", "weights", "sampler")


def _opt(default, help: str, choices=None):
    """A field with its CLI help (and choices) beside it: the one definition of the setting."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    dataset: str = field(metadata={"help": "built-in name, folder or .zip of class folders"})
    backbone: str = _opt("mobilenet_v2", "pretrained backbone (python -m engine backbones lists them)")
    mode: str = _opt("linear", "linear probe | partial (last K stages) | gradual (head first, then one more stage "
                     "per epoch) | full fine-tune | scratch (random init)", MODES)
    epochs: int | None = _opt(None, "training epochs (default: the mode's; the linear probe is one converged fit)")
    lr: float | None = _opt(None, "head learning rate; the backbone gets lr * backbone_lr_mult "
                            "(default: the mode's)")
    # bench recipe, 5 datasets at 128 px: 0.3 and no layer decay beat the plain reference everywhere; the
    # earlier 0.1 with decay 0.75 (fastai-like discriminative LRs) lost to it on digits (95.5 vs 98.1 %),
    # whose 8 px strokes are far from ImageNet, and 1.0 wrecked the 100-image set (10 %).
    backbone_lr_mult: float = _opt(0.3, "pretrained layers' LR as a fraction of the head's")
    unfreeze_stages: int = _opt(3, "partial mode: how many of the last backbone stages train")
    batch_size: int = _opt(32, "images per step")
    image_size: int | None = _opt(None, "training resolution in px (default: the backbone's native size)")
    augment: str = _opt("light", "augmentation preset: none | light | strong")
    label_smoothing: float = _opt(0.1, "label smoothing of the fine-tune's cross-entropy")
    weight_decay: float = _opt(0.05, "AdamW weight decay (not on biases and norms)")
    warmup_epochs: float = _opt(1.0, "linear LR warm-up before the cosine decay, in epochs")
    val_fraction: float = _opt(0.2, "share of each class held out for validation when the data has no val/")
    seed: int = _opt(0, "random seed (split, initialisation, batches, augmentation)")
    device: str = _opt("auto", "auto | cpu | cuda")
    amp: str = _opt("auto", "mixed precision: auto (bf16/fp16 on GPU, off on CPU) | bf16 | fp16 | off",
                    ("auto", "bf16", "fp16", "off"))
    channels_last: bool | None = _opt(None, "channels_last memory format (default: on for GPU, off for CPU)")
    threads: int | None = _opt(None, "CPU threads (default: all cores)")
    # Stage i of n (from the top) trains at backbone LR * decay**i, so early, generic layers move least
    # (off by default: see backbone_lr_mult).
    layer_decay: float = _opt(1.0, "layer-wise LR decay per backbone stage towards the input (1: off)")
    patience: int | None = _opt(None, "early stopping: epochs without a better validation loss (default: never)")
    mix: str = _opt("none", "MixUp / CutMix on batches (fine-tune modes)", MIX_MODES)
    mix_alpha: float = _opt(0.2, "MixUp's Beta(alpha, alpha)")
    compile: bool = _opt(False, "torch.compile the model (GPU; the first steps are slow while it compiles)")
    nproc: int = _opt(1, "processes (GPUs) for DistributedDataParallel; >1 is launched through torchrun")
    gradual_every: int = _opt(1, "gradual mode: epochs between unfreezing one more stage")
    # A random head's large gradients would otherwise wreck the pretrained features in the
    # first steps (LP-FT, Kumar et al. 2022).
    head_warmup: bool = _opt(True, "fine-tune modes start from the converged linear probe as the head")
    # Batch statistics of a small, domain-shifted dataset differ from ImageNet's: switching
    # batch norm to them moves every feature the warm-started head was fitted on.
    freeze_norm: bool = _opt(True, "fine-tunes keep the pretrained batch-norm statistics (their weights "
                             "still train); scratch mode never does")
    adapt_norm: bool = _opt(False, "fine-tunes first re-estimate the batch-norm statistics on the training images "
                            "(un-augmented), then fit the head warm-up on the adapted features")
    # The last two trade accuracy for minority-class recall; eval.json shows both metrics either way.
    # Validating costs a forward pass over val/ per epoch; when val/ is larger than train/ (few-shot
    # data) that costs more than the training itself, and a cosine schedule ends on its best epoch anyway.
    val_every: int | None = _opt(None, "validate every N epochs, and always after the last (default: auto, "
                                 "so that validation costs at most about a tenth of training)")
    balance: str = _opt("none", "class imbalance: none (plain loss) | weights (inverse-frequency loss weights) "
                        "| sampler (draw images inversely to their class frequency)", BALANCE_MODES)

    def __post_init__(self):
        if self.mode not in MODES:
            raise UserError(f"unknown mode '{self.mode}'; choose one of: {', '.join(MODES)}")
        if self.epochs is None:
            self.epochs = DEFAULT_EPOCHS[self.mode]
        if self.lr is None:
            self.lr = DEFAULT_LR[self.mode]
        if not 1 <= int(self.epochs) <= 1000:
            raise UserError(f"epochs must be between 1 and 1000, got {self.epochs}")
        if not 0 < float(self.lr) < 10:
            raise UserError(f"learning rate must be positive and below 10, got {self.lr}")
        if self.batch_size < 1:
            raise UserError("batch size must be at least 1")
        if self.val_every is not None and self.val_every < 1:
            raise UserError(f"val_every must be at least 1, got {self.val_every}")
        if self.image_size is not None and not 16 <= self.image_size <= 1024:
            raise UserError(f"image size must be between 16 and 1024 px, got {self.image_size}")
        from engine.training.augment import AUGMENT_PRESETS

        if self.augment not in AUGMENT_PRESETS:
            raise UserError(f"unknown augmentation '{self.augment}'; choose one of: {', '.join(AUGMENT_PRESETS)}")
        if self.mix not in MIX_MODES:
            raise UserError(f"unknown mix setting '{self.mix}'; choose one of: {', '.join(MIX_MODES)}")
        if not 0 < float(self.layer_decay) <= 1:
            raise UserError(f"layer decay must be in (0, 1], got {self.layer_decay}")
        if self.patience is not None and self.patience < 1:
            raise UserError(f"patience must be at least 1 epoch, got {self.patience}")
        if not 1 <= int(self.nproc) <= 64:
            raise UserError(f"nproc must be between 1 and 64, got {self.nproc}")
        if self.balance not in BALANCE_MODES:
            raise UserError(f"unknown balance setting '{self.balance}'; choose one of: {', '.join(BALANCE_MODES)}")
        if self.gradual_every < 1:
            raise UserError("gradual_every must be at least 1 epoch")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise UserError(f"unknown amp setting '{self.amp}'; choose auto, bf16, fp16 or off")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
        """One CLI option per field (``dataset`` positional), help and choices from the field."""
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name in exclude:
                continue
            kind = hints[f.name]
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            kwargs: dict[str, typing.Any] = {"help": f.metadata.get("help")}
            if f.default is MISSING:
                parser.add_argument(f.name, **kwargs)
                continue
            flag = "--" + f.name.replace("_", "-")
            kwargs["default"] = f.default
            if base is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            else:
                parser.add_argument(flag, type=base, choices=f.metadata.get("choices"), **kwargs)

    @classmethod
    def field_default(cls, name: str):
        """A field's default, for widgets that offer the setting (defined here only)."""
        return cls.__dataclass_fields__[name].default

    @classmethod
    def field_help(cls, name: str) -> str:
        return cls.__dataclass_fields__[name].metadata.get("help") or ""

    @property
    def num_epochs(self) -> int:
        """``epochs`` as training reads it: never None once constructed (the mode's default fills it)."""
        if self.epochs is None:  # only if someone set it to None after construction
            raise UserError("epochs is not set")
        return int(self.epochs)

    @property
    def base_lr(self) -> float:
        """``lr`` as training reads it: never None once constructed (the mode's default fills it)."""
        if self.lr is None:
            raise UserError("learning rate is not set")
        return float(self.lr)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "TrainConfig":
        return cls.from_dict({f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
