"""Configuration of the generative recommender: model size, optimisation and evaluation."""

from dataclasses import dataclass, field
from enum import Enum


class Precision(Enum):
    """`auto` is bf16 on GPU and fp32 on CPU."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


@dataclass
class ModelOptions:
    """A size preset (tiny, small, base, large) and any field of it overridden.

    The code levels and codebook sizes come from the tokenizer's output, the history length
    from `data.max_history`; null keeps the preset's value.
    """

    preset: str = "tiny"
    d_model: int | None = None
    num_heads: int | None = None
    head_dim: int | None = None
    d_ff: int | None = None
    encoder_layers: int | None = None
    decoder_layers: int | None = None
    dropout: float | None = None
    num_user_buckets: int | None = None
    ffn: str | None = None


@dataclass
class TrainerConfig:
    """Optimisation on a DeepSpeed engine; `batch_size` is global (all workers, all micro-steps).

    The defaults suit the built-in synthetic data on a CPU (a few minutes). The dataset presets
    in configs/datasets/ only name the data: the papers' setting is `trainer.model.preset=small`
    and far more epochs (TIGER and LETTER train for hundreds), which wants a GPU.

    `temperature` divides the logits in the cross-entropy: 1 is TIGER's plain loss, below 1
    LETTER's ranking-guided loss that sharpens the gap between the target and hard negatives.
    `eval_every` and `checkpoint_every` count optimizer steps; `patience` counts validations.
    """

    epochs: int = 3
    batch_size: int = 256
    micro_batch_size: int = 256
    lr: float = 5e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 30
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    temperature: float = 1.0
    eval_every: int = 200
    patience: int = 5
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    zero_stage: int = 0
    precision: Precision = Precision.auto
    device: str = "auto"
    shuffle_buffer: int = 4096
    log_every: int = 20
    model: ModelOptions = field(default_factory=ModelOptions)


@dataclass
class EvalConfig:
    """Beam search settings; `valid_users` > 0 validates during training on that many users
    (a fixed random sample) to save time, the final metrics always use every user."""

    beam_size: int = 20
    batch_size: int = 256
    valid_users: int = 0
    checkpoint: str | None = None
