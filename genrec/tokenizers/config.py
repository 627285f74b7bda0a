"""Configuration of the item tokenizers."""

import math
from dataclasses import dataclass
from enum import Enum

from genrec.schema import Invalid, at_least, device_name, option, positive


class TokenizerName(Enum):
    rqvae = "rqvae"
    rqkmeans = "rqkmeans"
    letter = "letter"
    mq = "mq"


class TokenizerInput(Enum):
    """Which item vectors are tokenized; `auto` is text where the items have text, else SASRec."""

    auto = "auto"
    text = "text"
    sasrec = "sasrec"
    lightgcn = "lightgcn"


# TIGER's codes per level, the size where `codebook_size` is unset and the catalogue is large.
CODEBOOK_SIZE = 256


def catalogue_codebook_size(items: int) -> int:
    """Codes per level for a catalogue: TIGER's 256, or under 512 items the largest power of
    two at most half of them, so that a first-level code groups two items or more on average
    (a codebook the catalogue's size would give each item a code of its own, or not fit)."""
    return max(2, min(CODEBOOK_SIZE, 1 << ((items // 2).bit_length() - 1)))


class CollisionMode(Enum):
    dedup = "dedup"
    sinkhorn = "sinkhorn"


def _share(section: object, *keys: str) -> None:
    for key in keys:
        value = getattr(section, key)
        if not 0 <= value < 1:
            raise Invalid(key, f"must be in [0, 1), got {value}")


@dataclass
class LetterConfig:
    """LETTER's regularisers (published best on Instruments: 0.02 and 1e-4)."""

    cf_weight: float = option(0.02, "weight of the collaborative alignment (InfoNCE vs SASRec)")
    cf_temperature: float = option(1.0, "temperature of that InfoNCE")
    diversity_weight: float = option(1e-4, "weight of the code diversity loss")
    diversity_clusters: int = option(10, "clusters of codewords the diversity loss spreads over")
    diversity_temperature: float = option(1.0, "temperature of the diversity loss")

    def check(self) -> None:
        at_least(self, 0, "cf_weight", "diversity_weight")
        positive(self, "cf_temperature", "diversity_temperature")
        at_least(self, 1, "diversity_clusters")


@dataclass
class MQConfig:
    """TokenRec's masked vector-quantized tokenizer over CF embeddings."""

    mask_ratio: float = option(0.2, "share of input features masked in training")

    def check(self) -> None:
        _share(self, "mask_ratio")


@dataclass
class TokenizerConfig:
    name: TokenizerName = option(TokenizerName.rqvae, "rqvae, rqkmeans, letter or mq")
    input: TokenizerInput = option(
        TokenizerInput.auto, "item vectors: auto, text, sasrec, lightgcn"
    )
    num_levels: int = option(3, "codes per semantic ID (before the dedup code)")
    codebook_size: int | None = option(
        None, "codes per level (null: 256, or fewer for a catalogue under 512 items)"
    )
    hidden_dims: list[int] = option([512, 256, 128], "encoder MLP widths (decoder mirrors them)")
    latent_dim: int = option(32, "width of the quantized latent")
    dropout: float = option(0.0, "dropout in the encoder and decoder")
    commitment: float = option(0.25, "weight of the commitment loss")
    ema: bool = option(False, "EMA codebook updates instead of gradient")
    ema_decay: float = option(0.99, "decay of the EMA codebooks")
    rotation_trick: bool = option(False, "rotation trick instead of the straight-through estimator")
    kmeans_init: bool = option(True, "codebooks start from k-means of the untrained encoder")
    kmeans_iters: int = option(50, "k-means iterations (init, rqkmeans)")
    dead_code_restart: bool = option(
        True, "re-seat unused codewords after each epoch before the kept window"
    )
    collapse_warning_usage: float = option(0.1, "warn when a level uses less of its codebook")
    epochs: int = option(200, "training epochs")
    batch_size: int = option(1024, "items per batch")
    lr: float = option(1e-3, "AdamW learning rate")
    weight_decay: float = option(1e-4, "AdamW weight decay (networks only)")
    whiten: bool = option(False, "PCA-whiten the item vectors before the encoder (TIGER++)")
    keep_epochs: int = option(1, "checkpoints kept of the last epochs (MTGRec's tokenizers)")
    keep_every: int = option(1, "epochs between two kept checkpoints")
    settle_lr: float = option(
        1.0, "lr share a cosine decay reaches at the first kept epoch, flat after (1: constant)"
    )
    tables: int = option(
        1, "semantic-ID tables, from the newest kept checkpoints (MTGRec's M tokenizers)"
    )
    catalogue: str | None = option(
        None, "item vectors (.npy) the kept checkpoints re-tokenize; null: the tokenizer's input"
    )
    collisions: CollisionMode = option(CollisionMode.dedup, "dedup code, or Sinkhorn re-assignment")
    sinkhorn_epsilon: float = option(0.05, "entropy weight of the Sinkhorn plan")
    sinkhorn_iters: int = option(50, "Sinkhorn iterations")
    device: str = option("cpu", "torch device of the tokenizer")
    letter: LetterConfig = option(LetterConfig, "LETTER's regularisers")
    mq: MQConfig = option(MQConfig, "TokenRec's masked tokenizer")

    def check(self) -> None:
        device_name(self, "device")
        at_least(self, 1, "num_levels", "latent_dim", "kmeans_iters", "epochs", "batch_size")
        at_least(self, 1, "keep_epochs", "keep_every", "tables", "sinkhorn_iters")
        if self.codebook_size is not None:
            at_least(self, 2, "codebook_size")
        at_least(self, 0, "commitment", "weight_decay")
        positive(self, "lr", "sinkhorn_epsilon")
        _share(self, "dropout", "ema_decay", "collapse_warning_usage")
        if not 0 < self.settle_lr <= 1:
            raise Invalid("settle_lr", f"must be in (0, 1], got {self.settle_lr}")
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise Invalid(
                "hidden_dims", f"must be a non-empty list of widths, got {self.hidden_dims}"
            )
        span = kept_window(self)
        if span > self.epochs:
            raise Invalid(
                "keep_epochs",
                f"({self.keep_epochs}, every {self.keep_every}) spans {span} epochs, more than "
                f"tokenizer.epochs ({self.epochs})",
            )
        if self.tables > self.keep_epochs:
            raise Invalid(
                "tables",
                f"({self.tables}) exceeds the checkpoints kept (tokenizer.keep_epochs = "
                f"{self.keep_epochs}): each table is read from its own kept checkpoint",
            )


# Keys read after the tokenizer is fitted: changing them refits nothing.
READ_SIDE_KEYS = ("tables", "catalogue")


def kept_window(cfg: TokenizerConfig) -> int:
    """Epochs from the first kept checkpoint to the last, both included."""
    return (cfg.keep_epochs - 1) * cfg.keep_every + 1


def is_kept(cfg: TokenizerConfig, epoch: int) -> bool:
    """Whether epoch (0-based) is one of the last `keep_epochs`, `keep_every` apart."""
    back = cfg.epochs - 1 - epoch
    return back % cfg.keep_every == 0 and back // cfg.keep_every < cfg.keep_epochs


def epoch_lr(cfg: TokenizerConfig, epoch: int) -> float:
    """Cosine decay to `settle_lr * lr` at the first kept epoch, flat after it: the kept
    checkpoints are adjacent points of one settled run (MTGRec's related tokenizers)."""
    first_kept = cfg.epochs - kept_window(cfg)
    if epoch >= first_kept:
        return cfg.lr * cfg.settle_lr
    progress = epoch / max(first_kept, 1)
    return cfg.lr * (cfg.settle_lr + (1 - cfg.settle_lr) * 0.5 * (1 + math.cos(math.pi * progress)))
