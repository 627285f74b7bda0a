"""Configuration of the generative recommender: model size, optimisation and evaluation."""

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from genrec.schema import Invalid, at_least, device_name, option, positive
from genrec.trainer.retrieval import Search, Similarity, faiss_missing


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

    preset: str = option("tiny", "size preset: tiny, small, base or large")
    d_model: int | None = option(None, "model width")
    num_heads: int | None = option(None, "attention heads")
    head_dim: int | None = option(None, "width per head (T5's d_kv)")
    d_ff: int | None = option(None, "feed-forward width")
    encoder_layers: int | None = option(None, "encoder blocks")
    decoder_layers: int | None = option(None, "decoder blocks")
    dropout: float | None = option(None, "dropout")
    num_user_buckets: int | None = option(None, "hashed user tokens (0: none)")
    ffn: str | None = option(None, "feed-forward kind: gated-gelu or relu")
    encoder: str = option(
        "causal", "causal (every prefix of a window in one pass) or bidirectional (per prefix)"
    )

    def check(self) -> None:
        from genrec.trainer.model import ModelConfig

        overrides = {k: v for k, v in vars(self).items() if k != "preset" and v is not None}
        ModelConfig.preset(self.preset, **overrides)


@dataclass
class CurriculumConfig:
    """MTGRec's influence curriculum over code groups (used when a run reads several tables)."""

    stage_epochs: list[float] = option(
        [], "epochs of each stage (the first a warm-up); [] keeps the groups uniform"
    )
    tau: float = option(1.0, "softmax temperature of the group weights over the raw scores")
    noise_z: float = option(
        2.0, "standard errors each group's score difference shrinks by (0: the paper's rule)"
    )
    train_examples: int = option(128, "training examples each group's gradient is taken on")
    valid_examples: int = option(256, "validation examples (mixed over the groups)")
    chunks: int = option(8, "chunks of each sample whose gradients the noise bootstrap resamples")
    bootstrap: int = option(200, "bootstrap resamples of the chunks for each score's noise")
    projection_dim: int = option(0, "random projection of the gradients (0: exact dot products)")
    batch_items: int = option(1024, "padded history items per batch of the estimate")

    def check(self) -> None:
        positive(self, "tau")
        at_least(self, 1, "train_examples", "valid_examples", "batch_items", "chunks")
        at_least(self, 0, "projection_dim", "noise_z", "bootstrap")
        if any(epochs <= 0 for epochs in self.stage_epochs):
            raise Invalid("stage_epochs", f"must all be positive, got {self.stage_epochs}")


class Baseline(Enum):
    """What `genrec evaluate` ranks beside the model: item popularity (counted, seconds at any
    size), SASRec (the `sasrec` stage: trained once, then read back by fingerprint)."""

    popularity = "popularity"
    sasrec = "sasrec"


class SiaGradient(Enum):
    """How SIA's target-side distributions reach the tokenizer's encoder: through every
    level's residual (`all`), or through the first level only (`first`: a straight-through
    residual, as the official code does by accident)."""

    all = "all"
    first = "first"


class Negatives(Enum):
    """PSA's in-batch negatives: the micro-batches of all ranks (`gathered`: the same loss for
    any worker count at the same global batch), or each rank's own (`local`)."""

    gathered = "gathered"
    local = "local"


@dataclass
class EtegrecConfig:
    """ETEGRec's alternation: each cycle is one tokenizer epoch, then cycle - 1 recommender
    epochs, both coupled by SIA and PSA (the paper's best weights: SIA 3e-4, PSA 1e-4). In
    tokenizer epochs the weights are relative to the RQ-VAE's loss as the official code scales
    it: reconstruction and quantization averaged over dimensions and levels, not summed."""

    cycle: int = option(2, "epochs per cycle: one tokenizer epoch, then cycle - 1 recommender")
    warmup_epochs: int = option(2, "first epochs with the alignment weights at zero")
    sia_weight: float = option(3e-4, "weight of sequence-item alignment (symmetric KL)")
    psa_weight: float = option(1e-4, "weight of preference-semantic alignment (InfoNCE)")
    vq_weight: float = option(
        1.0, "weight of the tokenizer's own loss (means over dimensions and levels) in its epochs"
    )
    sia_temperature: float = option(1.0, "T of the code distributions softmax(-distance / T)")
    psa_temperature: float = option(0.07, "InfoNCE temperature of PSA (cosine)")
    sia_gradient: SiaGradient = option(SiaGradient.all, "SIA reaches the encoder via all or first")
    negatives: Negatives = option(Negatives.gathered, "PSA negatives: gathered (all ranks), local")
    tokenizer_lr: float = option(1e-4, "peak learning rate of the tokenizer's optimizer")
    stop_when_stable: bool = option(
        True, "end the alternation once a tokenizer epoch changes no item's ID"
    )
    alternate: bool = option(
        True, "alternate by epoch (false: update both at every step, the paper's ablation)"
    )
    joint: bool = option(True, "train the tokenizer too (false: fixed IDs, e.g. fine-tuning)")

    def check(self) -> None:
        at_least(self, 2, "cycle")
        at_least(self, 0, "warmup_epochs", "sia_weight", "psa_weight", "vq_weight")
        positive(self, "sia_temperature", "psa_temperature", "tokenizer_lr")


class RetrievalLoss(Enum):
    """TokenRec's training signal: softmax over the target and uniformly sampled items, or the
    paper's cosine embedding loss against sampled negatives. Either way the negatives are drawn
    once per micro-batch and shared by its examples (`TokenrecConfig.negatives`)."""

    softmax = "softmax"
    cosine = "cosine"


class UserTokens(Enum):
    """Where TokenRec's user tokens come from. `table` is the paper's kind: one fixed set per
    user, its row of the users' MQ table, coded from its whole training history, so a
    training example's user tokens already know its target. `history` codes each example's
    own history, in training and evaluation alike (as the paper codes unseen users). Both
    code a history propagated one LightGCN step from the trained item vectors, the vectors
    the users' MQ is fitted on (genrec/cf/lightgcn.py; the paper fits on and codes the
    trained LightGCN user vectors, whose norms and codes differ from a history's)."""

    none = "none"
    table = "table"
    history = "history"


@dataclass
class TokenrecConfig:
    """TokenRec's preference vector against the items' LightGCN vectors."""

    loss: RetrievalLoss = option(RetrievalLoss.softmax, "softmax (sampled) or cosine (paper)")
    negatives: int = option(
        256, "uniform negative items, drawn once per micro-batch and shared by its examples"
    )
    temperature: float = option(0.1, "softmax temperature of the cosine scores")
    margin: float = option(0.0, "cosine loss: negatives count above this similarity")
    user_tokens: UserTokens = option(
        UserTokens.history, "the user's MQ tokens: of its history (history), table or none"
    )
    similarity: Similarity = option(Similarity.cosine, "retrieval score: cosine or dot")
    search: Search = option(Search.exact, "top-K: exact (every item) or hnsw (faiss: genrec[ann])")
    head: str = option("pooled", "preference vector: pooled (mean encoder state) or decoder")

    def check(self) -> None:
        at_least(self, 1, "negatives")
        positive(self, "temperature")
        if not -1.0 <= self.margin < 1.0:
            raise Invalid("margin", f"must be in [-1, 1), got {self.margin}")
        from genrec.trainer.model import PREFERENCE_HEADS

        if self.head not in PREFERENCE_HEADS:
            raise Invalid("head", f"must be one of {PREFERENCE_HEADS}, got {self.head!r}")
        if self.search is Search.hnsw and (missing := faiss_missing()):
            raise Invalid("search", f"is hnsw, but {missing}")


@dataclass
class TrainerConfig:
    """Optimisation on a DeepSpeed engine; `batch_size` is global (all workers, all micro-steps).

    The defaults train to the validation plateau: a validation each epoch, the run stopping
    after `patience` of them without a 2% gain in NDCG@10 (`epochs` is only a cap), at a constant
    learning rate after warm-up, so that the cap does not shape the schedule (BENCHMARKS.md,
    "Quality at convergence"). The dataset presets in configs/datasets/ only name the data;
    the papers' settings are in configs/methods/.
    """

    epochs: int = option(200, "most passes over the training examples (patience stops earlier)")
    batch_size: int = option(256, "global batch: examples per optimizer step, all workers")
    micro_batch_size: int | None = option(
        None, "examples per worker per micro-step; null: batch / workers, capped"
    )
    max_micro_batch_size: int = option(256, "cap on the derived micro-batch (worker memory)")
    lr: float = option(5e-3, "peak learning rate (AdamW)")
    min_lr_ratio: float = option(1.0, "final learning rate as a share of the peak (1: constant)")
    warmup_steps: int = option(30, "optimizer steps of linear warm-up")
    weight_decay: float = option(0.05, "AdamW weight decay (matrices only)")
    grad_clip: float = option(1.0, "gradient norm clip")
    temperature: float = option(1.0, "logit temperature of the code loss (< 1: LETTER)")
    eval_every: int | None = option(None, "optimizer steps between validations (null: one epoch's)")
    patience: int = option(5, "validations without progress before the run stops")
    min_gain: float = option(
        0.02, "progress: relative gain in NDCG@10 over the validation that last made progress"
    )
    checkpoint_every: int = option(0, "optimizer steps between checkpoints (0: each validation)")
    keep_checkpoints: int = option(2, "newest checkpoints Ray keeps")
    zero_stage: int = option(0, "DeepSpeed ZeRO stage, 0-3")
    precision: Precision = option(Precision.auto, "auto (bf16 on GPU), fp32 or bf16")
    device: str = option("auto", "torch device of each worker (auto: its GPU, else CPU)")
    shuffle_buffer: int = option(4096, "examples in each worker's shuffle buffer")
    data_fraction: float = option(
        1.0, "share of training users whose sequences train (a seeded subset; valid/test all)"
    )
    window_stride: int | None = option(
        None,
        "causal encoder: targets each window trains, its newest ones (null: half "
        "of data.max_history)",
    )
    log_every: int = option(20, "optimizer steps between TensorBoard points")
    model: ModelOptions = option(ModelOptions, "the encoder-decoder's size")
    init_from: str | None = option(None, "a model.pt whose weights training starts from")
    curriculum: CurriculumConfig = option(CurriculumConfig, "MTGRec's curriculum over groups")
    etegrec: EtegrecConfig = option(EtegrecConfig, "ETEGRec's tokenizer trained alongside")
    tokenrec: TokenrecConfig = option(TokenrecConfig, "TokenRec's retrieval head and loss")

    def check(self) -> None:
        device_name(self, "device")
        at_least(self, 1, "epochs", "batch_size", "max_micro_batch_size")
        if self.eval_every is not None:
            at_least(self, 1, "eval_every")
        at_least(self, 1, "patience", "keep_checkpoints", "log_every")
        at_least(self, 0, "warmup_steps", "weight_decay", "checkpoint_every", "shuffle_buffer")
        at_least(self, 0, "min_gain")
        positive(self, "lr", "temperature", "grad_clip")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise Invalid("micro_batch_size", f"must be >= 1 or null, got {self.micro_batch_size}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise Invalid("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.data_fraction <= 1:
            raise Invalid("data_fraction", f"must be in (0, 1], got {self.data_fraction}")
        if self.window_stride is not None and self.window_stride < 1:
            raise Invalid("window_stride", f"must be >= 1 or null, got {self.window_stride}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise Invalid("zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        if sum(self.curriculum.stage_epochs) > self.epochs:
            raise Invalid(
                "curriculum.stage_epochs",
                f"({self.curriculum.stage_epochs}) span {sum(self.curriculum.stage_epochs)} "
                f"epochs, more than the run's trainer.epochs ({self.epochs})",
            )


@dataclass
class FinetuneConfig:
    """Fine-tuning after pre-training: on one table (MTGRec), or on the learned IDs with the
    tokenizer frozen (ETEGRec), at a lower lr."""

    epochs: int = option(0, "fine-tuning epochs on one table after pre-training (0: none)")
    lr: float = option(2e-4, "peak learning rate of fine-tuning")
    candidates: list[int] = option(
        [0], "tables to fine-tune on, each in turn; the best-validating run is kept (0: final)"
    )
    from_scratch: bool = option(
        False, "train a new model on the chosen IDs instead (ETEGRec's 'no end-to-end' ablation)"
    )

    def check(self) -> None:
        at_least(self, 0, "epochs")
        positive(self, "lr")
        if not self.candidates or min(self.candidates) < 0:
            raise Invalid("candidates", f"must be table indices >= 0, got {self.candidates}")


def batch_plan(trainer: TrainerConfig, workers: int) -> tuple[int, int]:
    """(micro-batch per worker, micro-steps per optimizer step) that make the global batch for
    this worker count. A null micro-batch is the worker's share of the batch, or its largest
    divisor within `max_micro_batch_size` (more micro-steps instead of more memory)."""
    if trainer.batch_size % workers:
        raise Invalid(
            "batch_size",
            f"({trainer.batch_size}) must be divisible by cluster.num_workers ({workers})",
        )
    share = trainer.batch_size // workers
    micro = trainer.micro_batch_size or next(
        size for size in range(min(share, trainer.max_micro_batch_size), 0, -1) if share % size == 0
    )
    if share % micro:
        raise Invalid(
            "micro_batch_size",
            f"({micro}) must divide each worker's share of trainer.batch_size "
            f"({trainer.batch_size} / {workers} workers = {share})",
        )
    return micro, share // micro


@dataclass
class EvalConfig:
    """How a model is judged; the final metrics always use every user."""

    beam_size: int = option(20, "beam width (the ranked list per user)")
    batch_size: int = option(256, "users decoded at a time")
    valid_users: int = option(2000, "validate during training on a fixed sample (0: all users)")
    test_users: int = option(
        0, "test on a seeded sample of users (0: all), with each metric's 95% interval"
    )
    baselines: list[Baseline] = option(
        [Baseline.popularity, Baseline.sasrec], "baselines beside the model: popularity, sasrec"
    )
    checkpoint: str | None = option(None, "genrec evaluate: a model.pt to judge instead")

    def check(self) -> None:
        at_least(self, 1, "beam_size", "batch_size")
        at_least(self, 0, "valid_users", "test_users")
        if self.test_users == 1:
            raise Invalid("test_users", "must be 0 (all) or at least 2: a sample's interval")


@dataclass
class RecommendConfig:
    """`genrec recommend`: each user's top-k items after its latest interaction."""

    k: int = option(10, "items recommended per user")
    users: str | None = option(
        None, "raw user ids to recommend for (Parquet/CSV `user` column, or one a line); null: all"
    )
    out: str | None = option(None, "the Parquet file; null: run_dir/recommendations.parquet")

    def check(self) -> None:
        at_least(self, 1, "k")


def validation_steps(trainer: Any, examples_per_epoch: int) -> int:
    """Optimizer steps between validations: `eval_every`, or one epoch's steps when null."""
    epoch = max(1, math.ceil(examples_per_epoch / trainer.batch_size))
    return trainer.eval_every or epoch


def window_stride(cfg: Any) -> int | None:
    """The causal encoder's window stride; None for the bidirectional one (prefix examples)."""
    if cfg.trainer.model.encoder != "causal":
        return None
    return cfg.trainer.window_stride or max(1, cfg.data.max_history // 2)
