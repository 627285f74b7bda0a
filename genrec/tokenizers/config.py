"""Configuration of item tokenizers and of the collaborative-filtering embedding models."""

from dataclasses import dataclass, field
from enum import Enum


class TokenizerName(Enum):
    rqvae = "rqvae"
    rqkmeans = "rqkmeans"
    letter = "letter"
    mq = "mq"


class TokenizerInput(Enum):
    """Which item vectors are tokenized."""

    text = "text"
    sasrec = "sasrec"
    lightgcn = "lightgcn"


class CollisionMode(Enum):
    dedup = "dedup"
    sinkhorn = "sinkhorn"


@dataclass
class LetterConfig:
    """LETTER's regularisers (published best on Instruments: 0.02 and 1e-4)."""

    cf_weight: float = 0.02
    cf_temperature: float = 1.0
    diversity_weight: float = 1e-4
    diversity_clusters: int = 10
    diversity_temperature: float = 1.0


@dataclass
class MQConfig:
    """TokenRec's masked vector-quantized tokenizer over CF embeddings."""

    mask_ratio: float = 0.2


@dataclass
class TokenizerConfig:
    name: TokenizerName = TokenizerName.rqvae
    input: TokenizerInput = TokenizerInput.text
    num_levels: int = 3
    codebook_size: int = 256
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])
    latent_dim: int = 32
    dropout: float = 0.0
    commitment: float = 0.25
    ema: bool = False
    ema_decay: float = 0.99
    rotation_trick: bool = False
    kmeans_init: bool = True
    kmeans_iters: int = 50
    dead_code_restart: bool = True
    collapse_warning_usage: float = 0.1
    epochs: int = 200
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    keep_epochs: int = 3
    collisions: CollisionMode = CollisionMode.dedup
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 50
    device: str = "cpu"
    letter: LetterConfig = field(default_factory=LetterConfig)
    mq: MQConfig = field(default_factory=MQConfig)


class SASRecLoss(Enum):
    """Full softmax over all items, or the original's BCE against one random negative."""

    ce = "ce"
    bce = "bce"


@dataclass
class SASRecConfig:
    """SASRec; `patience` counts validations (every `eval_every` epochs), not epochs.

    Softmax CE is the default: on Beauty it reached validation NDCG@10 0.0395 in 12 epochs
    where BCE had 0.021 after 30 (same time), and on the synthetic data 0.50 against 0.33.
    """

    hidden: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.3
    max_len: int = 50
    loss: SASRecLoss = SASRecLoss.ce
    epochs: int = 200
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    patience: int = 3
    eval_every: int = 2
    device: str = "cpu"


@dataclass
class LightGCNConfig:
    """LightGCN; `weight_decay` is the BPR L2 weight on the batch's layer-0 embeddings.

    lr 5e-3 reaches the validation NDCG@10 of the paper's 1e-3 in a fifth of the epochs.
    """

    dim: int = 64
    layers: int = 3
    epochs: int = 200
    batch_size: int = 2048
    lr: float = 5e-3
    weight_decay: float = 1e-4
    patience: int = 5
    eval_every: int = 5
    device: str = "cpu"
