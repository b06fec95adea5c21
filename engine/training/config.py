"""What a training run is asked to do; saved as config.json and in every checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from engine.errors import UserError

__all__ = ["TrainConfig", "MODES", "MIX_MODES"]

MODES = ("linear", "partial", "gradual", "full", "scratch")
DEFAULT_EPOCHS = {"linear": 30, "partial": 5, "gradual": 6, "full": 5, "scratch": 5}
DEFAULT_LR = {"linear": 3e-3, "partial": 1e-3, "gradual": 1e-3, "full": 1e-3, "scratch": 3e-3}
MIX_MODES = ("none", "mixup", "cutmix", "both")


@dataclass
class TrainConfig:
    dataset: str
    backbone: str = "mobilenet_v2"
    # linear probe | partial (last K stages) | gradual (head first, then one more stage
    # per epoch) | full fine-tune | scratch (random init)
    mode: str = "linear"
    epochs: int | None = None  # None: the mode's default
    lr: float | None = None  # None: the mode's default (head LR; the backbone gets lr * backbone_lr_mult)
    backbone_lr_mult: float = 0.1  # discriminative LR: pretrained layers move slower than the new head
    unfreeze_stages: int = 3  # partial mode: how many of the last backbone stages train
    batch_size: int = 32
    image_size: int | None = None  # None: the backbone's native input size
    augment: str = "light"
    label_smoothing: float = 0.1
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16/fp16 on GPU, off on CPU) | bf16 | fp16 | off
    channels_last: bool | None = None  # None: on for GPU, off for CPU
    threads: int | None = None  # CPU threads; None: all cores
    # Layer-wise LR decay: stage i of n (from the top) trains at backbone LR * decay**i, so
    # early, generic layers move least. 1.0: one backbone LR for every stage.
    layer_decay: float = 0.75
    patience: int | None = None  # early stopping: epochs without a better val loss; None: never stop
    mix: str = "none"  # mixup / cutmix on batches (full-image modes only)
    mix_alpha: float = 0.2
    compile: bool = False  # torch.compile the model (GPU; first steps are slow while it compiles)
    nproc: int = 1  # processes (GPUs) for DistributedDataParallel; >1 is launched through torchrun
    gradual_every: int = 1  # gradual mode: epochs between unfreezing one more stage
    # Fine-tuning modes first fit the new head on frozen features for this many (cheap)
    # epochs: a random head's large gradients would otherwise wreck the pretrained
    # features in the first steps (LP-FT, Kumar et al. 2022). 0: off.
    head_warmup_epochs: int = 10

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
        if not 0 <= int(self.head_warmup_epochs) <= 1000:
            raise UserError(f"head warm-up epochs must be between 0 and 1000, got {self.head_warmup_epochs}")
        if self.gradual_every < 1:
            raise UserError("gradual_every must be at least 1 epoch")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise UserError(f"unknown amp setting '{self.amp}'; choose auto, bf16, fp16 or off")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
