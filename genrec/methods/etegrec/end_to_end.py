"""ETEGRec (Liu et al., SIGIR'25): the RQ-VAE keeps training beside the recommender.

Each cycle of `trainer.etegrec.cycle` epochs is one tokenizer epoch (its VQ loss + SIA + PSA,
the recommender frozen) then cycle - 1 recommender epochs (code generation + SIA + PSA, the
tokenizer frozen). The tokenizer is a second DeepSpeed engine: its own optimizer, learning rate
and schedule, and its own tag in every checkpoint. After each tokenizer epoch every item is
re-coded and its collisions resolved on rank 0, and every rank rebuilds the loop's code table
and trie from the broadcast IDs.

- SIA: the encoder output, mean-pooled and mapped into the tokenizer's latent space, and the
  target item's latent each give per-level code distributions softmax(-distance / T); a
  symmetric KL pulls them together.
- PSA: the decoder's first state, mapped into the item-embedding space, against the
  tokenizer's reconstruction of the target's embedding: symmetric InfoNCE over cosines.

Both are computed on the batch's unique targets; with `negatives=gathered` the batch is the
micro-batches of all ranks, so the loss is the same for any worker count.

The tokenizer's own (VQ) loss is scaled as the official code scales it, for the weights of SIA
and PSA to mean what they mean there: the reconstruction's squared error averaged over the
item vector's dimensions and the codebook + commitment losses averaged over levels
(`mean_vq_loss`), where the RQ-VAE of `genrec tokenize` sums both. Against the sums, SIA and
PSA at the paper's weights are about 1% and 0.2% of the VQ term's gradient norm w.r.t. the
tokenizer (default synthetic run, untrained recommender), the alignment all but off; against
the means, about 30% and 5%.
"""

import dataclasses
import hashlib
import logging
import math
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from genrec.artifacts import TOKENIZER_CHECKPOINT
from genrec.errors import DataError, TrainingFailed
from genrec.tokenizers.checkpoints import load_tokenizer
from genrec.tokenizers.rqvae import RQVAE
from genrec.tokenizers.tokenize import (
    id_table_bytes,
    load_vectors,
    resolve_ids,
    tokenizer_input,
)
from genrec.trainer.config import Negatives, SiaGradient
from genrec.trainer.engine import build_engine
from genrec.trainer.hooks import Plugin
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import ModelConfig, code_cross_entropy
from genrec.trainer.objective import Batch

if TYPE_CHECKING:
    from genrec.trainer.train import Loop

TOKENIZER_TAG = "tokenizer"

log = logging.getLogger(__name__)


class Phase(Enum):
    """What an epoch trains: the tokenizer, the recommender, or both at every step (`joint`,
    the paper's ablation without alternation)."""

    tokenizer = "tokenizer"
    recommender = "recommender"
    joint = "joint"


def phase_of(epoch: int, cycle: int, alternate: bool) -> Phase:
    """Each cycle's first epoch trains the tokenizer, the rest the recommender; without
    alternation every epoch trains both."""
    if not alternate:
        return Phase.joint
    return Phase.tokenizer if epoch % cycle == 0 else Phase.recommender


def level_logits(
    codebooks: list[Tensor], latent: Tensor, temperature: float, through_all: bool
) -> Tensor:
    """[N, L, K] logits -distance² / T of each level's input to that level's codewords.

    `through_all`: the next level's input is the residual minus the nearest codeword, so every
    level's distribution has a gradient to the latent; otherwise it is detached, as a
    straight-through residual is, and only the first level reaches the latent."""
    out, residual = [], latent
    for weight in codebooks:
        distance = (
            (residual**2).sum(-1, keepdim=True) - 2 * residual @ weight.T + (weight**2).sum(-1)
        )
        out.append(-distance / temperature)
        # F.embedding, not indexing: the backward of indexing adds in thread order on CPU.
        step = residual - F.embedding(distance.detach().argmin(-1), weight)
        residual = step if through_all else step.detach()
    return torch.stack(out, dim=1)


def symmetric_kl(a_logits: Tensor, b_logits: Tensor) -> Tensor:
    """KL(p‖q) + KL(q‖p) = Σ (p - q)(log p - log q) of the distributions over the last dim,
    averaged over all other positions (rows x levels)."""
    a = F.log_softmax(a_logits.float(), dim=-1)
    b = F.log_softmax(b_logits.float(), dim=-1)
    return ((a.exp() - b.exp()) * (a - b)).sum(-1).mean()


def info_nce(query: Tensor, keys: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE over cosine similarities: row i of each is the other's positive, the
    other rows its negatives."""
    logits = F.normalize(query.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T
    logits = logits / temperature
    labels = torch.arange(len(query), device=query.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)


def first_occurrences(items: Tensor) -> Tensor:
    """Row index of the first occurrence of each distinct item, so every target counts once."""
    _, inverse = torch.unique(items, return_inverse=True)
    rows = torch.arange(len(items), device=items.device)
    first = torch.full((int(inverse.max()) + 1,), len(items), device=items.device)
    return first.scatter_reduce(0, inverse, rows, reduce="amin")


def gather_rows(x: Tensor) -> Tensor:
    """Every rank's rows in rank order; only this rank's own rows carry gradient."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    longest = int(max(sizes))
    padded = x.detach().new_zeros((longest, *x.shape[1:]))
    padded[: len(x)] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts = [part[: int(size)] for part, size in zip(parts, sizes, strict=True)]
    parts[rank] = x
    return torch.cat(parts)


def mean_vq_loss(x: Tensor, x_hat: Tensor, quantized: dict[str, Tensor], levels: int) -> Tensor:
    """The RQ-VAE's loss as the official code scales it beside SIA and PSA: the reconstruction's
    squared error averaged over dimensions (`RQVAE.quantize` sums them) plus the codebook and
    commitment losses averaged over levels (summed there)."""
    return F.mse_loss(x_hat, x) + quantized["quantization"] / levels


def ids_digest(ids: np.ndarray) -> str:
    """The digest `genrec evaluate` checks: that of the table file these IDs are written as."""
    return hashlib.sha256(id_table_bytes(ids, "item")).hexdigest()


class EndToEnd(Plugin):
    """The tokenizer trained beside the loop's model, the phase, the current and best IDs; the
    named state "etegrec" of every checkpoint (the tokenizer's engine has its own tag)."""

    name = "etegrec"

    def __init__(self, cfg: DictConfig, items_dir: Path, num_items: int, device: torch.device):
        self.cfg, self.options = cfg, cfg.trainer.etegrec
        path = items_dir / TOKENIZER_CHECKPOINT
        try:
            tokenizer = load_tokenizer(path)
        except (OSError, RuntimeError, KeyError) as err:
            raise DataError(str(path), f"cannot load the pre-trained tokenizer: {err}") from err
        if not isinstance(tokenizer, RQVAE):
            raise DataError(str(path), "ETEGRec trains an RQ-VAE tokenizer (rqvae or letter)")
        vectors = load_vectors(tokenizer_input(items_dir.parent), num_items)
        self.vectors = torch.from_numpy(vectors).to(device)
        self.tokenizer = tokenizer.to(device)
        self.through_all = self.options.sia_gradient is SiaGradient.all
        self.phase: Phase | None = None
        self.phase_epoch = 0
        self.finished: Phase | None = None
        self.owed = False  # a validation fell due where `validate_now` moved it
        self.changes: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []  # each finished epoch's phase and seconds
        self.epoch_started = 0.0
        self.stable = False
        self.ids = self.best_ids = np.zeros((0, 0), dtype=np.int64)

    def model_config(self, config: ModelConfig, codebook_size: int) -> ModelConfig:
        """The loop's model with the alignment adapters, and dedup room for re-coded IDs."""
        return dataclasses.replace(
            config,
            dedup_size=max(config.dedup_size, codebook_size),
            latent_adapter_dim=self.tokenizer.cfg.latent_dim,
            embedding_adapter_dim=self.vectors.shape[1],
        )

    def model_epochs(self, epochs: int) -> int:
        """Epochs the recommender's optimizer steps in (its schedule spans only those)."""
        return self.epochs_of(Phase.recommender, Phase.joint)

    def epochs_of(self, *phases: Phase) -> int:
        return sum(self.phase_of(e) in phases for e in range(self.cfg.trainer.epochs))

    def phase_of(self, epoch: int) -> Phase:
        return phase_of(epoch, self.options.cycle, self.options.alternate)

    def attach(self, loop: "Loop") -> None:
        """The tokenizer's engine (AdamW at `tokenizer_lr`, cosine over its own steps)."""
        self.loop = loop
        self.ids = loop.codes.group(0).cpu().numpy()
        self.best_ids = self.ids
        examples = loop.examples_per_epoch * self.epochs_of(Phase.tokenizer, Phase.joint)
        steps = max(1, math.ceil(examples / loop.trainer.batch_size))
        # fp32 whatever the recommender's precision: codeword distances need it.
        tuning = {"lr": self.options.tokenizer_lr, "warmup_steps": 0, "precision": "fp32"}
        trainer = OmegaConf.merge(loop.trainer, tuning)
        self.engine = build_engine(
            self.tokenizer, trainer, steps, loop.device, self.tokenizer.param_groups()
        )

    def epoch(self) -> int:
        """The epoch the next optimizer step belongs to."""
        return self.loop.progress.samples // self.loop.examples_per_epoch

    def upcoming(self) -> Phase | None:
        """The phase of the next optimizer step; None once every epoch is trained."""
        epoch = self.epoch()
        return None if epoch >= self.cfg.trainer.epochs else self.phase_of(epoch)

    def aligned(self) -> bool:
        return self.epoch() >= self.options.warmup_epochs

    def updates(self, batch: Batch) -> list[tuple[Any, Tensor, dict[str, Tensor]]]:
        """(engine, loss, terms) of each part this phase trains on the micro-batch; the phase
        holds for whole optimizer steps (it changes in `step_end` only)."""
        if self.phase is None:
            self.phase, self.phase_epoch = self.upcoming() or Phase.recommender, self.epoch()
        updates = []
        if self.phase is not Phase.recommender:
            updates.append((self.engine, *self.tokenizer_loss(batch)))
        if self.phase is not Phase.tokenizer:
            updates.append((self.loop.engine, *self.recommender_loss(batch)))
        return updates

    def recommender_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        self.tokenizer.eval()
        engine = self.loop.engine
        logits, seq, dec = engine(batch.history_codes, batch.target_codes, batch.user, aligned=True)
        codes = batch.per_target(batch.target_codes)
        generation = code_cross_entropy(logits, codes, self.cfg.trainer.temperature)
        terms = {"generation": generation.detach()}
        if not self.aligned():
            return generation, terms
        target, seq, dec = self.alignment_rows(batch.per_target(batch.target), seq, dec)
        with torch.no_grad():
            x_hat, quantized = self.tokenizer.quantize(self.vectors[target])
        # Copies: without alternation the tokenizer steps before this loss's backward.
        codebooks = [level.weight.detach().clone() for level in self.tokenizer.quantizer.levels]
        sia, psa = self.alignment(codebooks, quantized["residuals"][0], x_hat, seq, dec)
        # Gathered rows: each rank's gradient reaches only its own rows, so the ranks' mean
        # gradient is 1/world of the whole; scaling by the world size restores it.
        scale = dist.get_world_size() if self.options.negatives is Negatives.gathered else 1
        o = self.options
        loss = generation + scale * (o.sia_weight * sia + o.psa_weight * psa)
        return loss, terms | {"sia": sia.detach(), "psa": psa.detach()}

    def tokenizer_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        self.tokenizer.train()
        target = batch.per_target(batch.target)
        if self.aligned():
            with torch.no_grad():
                _, seq, dec = self.loop.engine(
                    batch.history_codes, batch.target_codes, batch.user, aligned=True
                )
            target, seq, dec = self.alignment_rows(target, seq, dec)
        else:
            target = target[first_occurrences(target)]
        vectors = self.vectors[target]
        x_hat, quantized = self.tokenizer.quantize(vectors)
        vq = mean_vq_loss(vectors, x_hat, quantized, len(self.tokenizer.quantizer.levels))
        o = self.options
        if not self.aligned():
            return o.vq_weight * vq, {"vq": vq.detach()}
        codebooks = [level.weight for level in self.tokenizer.quantizer.levels]
        sia, psa = self.alignment(codebooks, quantized["residuals"][0], x_hat, seq, dec)
        loss = o.vq_weight * vq + o.sia_weight * sia + o.psa_weight * psa
        return loss, {"vq": vq.detach(), "sia": sia.detach(), "psa": psa.detach()}

    def alignment_rows(
        self, target: Tensor, seq: Tensor, dec: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The unique targets of the batch (of all ranks' micro-batches with gathering)."""
        if self.options.negatives is Negatives.gathered:
            target, seq, dec = gather_rows(target), gather_rows(seq), gather_rows(dec)
        unique = first_occurrences(target)
        return target[unique], seq[unique], dec[unique]

    def alignment(
        self, codebooks: list[Tensor], latent: Tensor, x_hat: Tensor, seq: Tensor, dec: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(SIA, PSA): the code distributions of the sequence's and the target's latents, and
        the decoder's first state against the target's reconstruction."""
        o = self.options
        target_logits = level_logits(codebooks, latent, o.sia_temperature, self.through_all)
        seq_logits = level_logits(codebooks, seq.float(), o.sia_temperature, self.through_all)
        sia = symmetric_kl(seq_logits, target_logits)
        return sia, info_nce(dec.float(), x_hat, o.psa_temperature)

    def engines(self) -> dict[str, Any]:
        return {TOKENIZER_TAG: self.engine}

    def step_end(self, writer: Any) -> bool:
        """At an optimizer step's end: re-code the items when an epoch that trained the
        tokenizer just ended; stop once re-coding changes no ID (`stop_when_stable`)."""
        finished_epoch = self.phase_epoch
        self.finished, self.phase, self.phase_epoch = self.phase, self.upcoming(), self.epoch()
        if self.phase_epoch == finished_epoch:
            return self.stable
        seconds = self.loop.progress.train_seconds
        self.epochs.append(
            {
                "epoch": finished_epoch,
                "phase": self.finished.value,
                "seconds": round(seconds - self.epoch_started, 3),
            }
        )
        self.epoch_started = seconds
        if self.finished is not Phase.recommender:
            self.recode()
        return self.stable

    def validate_now(self, due: bool) -> bool:
        """At the end of a recommender phase, when a validation fell due since the last one:
        the model has then trained on the latest IDs. Validating after a tokenizer step
        measures the model it left as is, right after a re-coding one it has not trained on
        the new IDs; a cadence of one cycle, as `benchmarks/converged.py` sets, would
        otherwise fall on those steps for long stretches (a run that never validates never
        stops). Without alternation, when due."""
        if self.finished is Phase.joint:
            return due
        self.owed = self.owed or due
        if self.finished is not Phase.recommender or self.phase is Phase.recommender:
            return False
        owed, self.owed = self.owed, False
        return owed

    @torch.no_grad()
    def recode(self) -> None:
        """Every item's new ID, resolved on rank 0 and broadcast; the loop's table and trie
        follow. Stops the alternation once no ID changes (`stop_when_stable`)."""
        loop = self.loop
        started = time.perf_counter()
        ids = torch.zeros(self.ids.shape, dtype=torch.long, device=loop.device)
        if loop.rank == 0:
            ids.copy_(torch.from_numpy(self.fresh_ids()))
        dist.broadcast(ids, src=0)
        ids = ids.cpu().numpy()
        room = loop.model.config.dedup_size
        if int(ids[:, -1].max()) >= room:
            raise TrainingFailed(
                f"re-coding after epoch {loop.epoch():.0f} made {int(ids[:, -1].max()) + 1} "
                f"items share one ID, more than the model's {room} dedup codes; set "
                "tokenizer.collisions=sinkhorn"
            )
        changed = float((ids != self.ids).any(1).mean())
        self.changes.append(
            {
                "step": loop.progress.step,
                "epoch": loop.epoch(),
                "first_code": float((ids[:, 0] != self.ids[:, 0]).mean()),
                "id": changed,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        self.set_ids(ids)
        self.stable = self.options.stop_when_stable and changed == 0.0
        if loop.rank == 0:
            log.info(
                "re-coded items at epoch %.2f: %.1f%% of IDs changed", loop.epoch(), 100 * changed
            )

    def fresh_ids(self) -> np.ndarray:
        """The items' IDs under the tokenizer as it is now, collisions resolved."""
        codes = self.tokenizer.encode(self.vectors).cpu().numpy()
        tokenizer = self.cfg.tokenizer
        distances = None
        if tokenizer.collisions.name == "sinkhorn":
            distances = self.tokenizer.last_level_distances(self.vectors).cpu().numpy()
        return resolve_ids(codes, distances, tokenizer)

    def set_ids(self, ids: np.ndarray) -> None:
        loop = self.loop
        self.ids = ids
        loop.codes = ItemCodes(ids, loop.codes.codebook_size).to(loop.device)
        loop.ranker = loop.method.ranker(self.cfg, loop.codes, loop.tables)

    def new_best(self) -> None:
        self.best_ids = self.ids

    def best_payload(self) -> dict[str, Any]:
        """What the best model file adds: the IDs it was selected with, and their digest."""
        return {
            "item_ids": torch.from_numpy(self.best_ids),
            "semantic_ids": [ids_digest(self.best_ids)],
        }

    def summary(self) -> dict[str, Any]:
        return {"recoded": self.changes, "phase_epochs": self.epochs}

    def state_dict(self) -> dict[str, Any]:
        return {
            "ids": torch.from_numpy(self.ids),
            "best_ids": torch.from_numpy(self.best_ids),
            "changes": self.changes,
            "epochs": self.epochs,
            "epoch_started": self.epoch_started,
            "stable": self.stable,
            "owed": self.owed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.changes, self.stable, self.owed = state["changes"], state["stable"], state["owed"]
        self.epochs, self.epoch_started = state["epochs"], state["epoch_started"]
        self.best_ids = state["best_ids"].numpy()
        self.set_ids(state["ids"].numpy())
        self.phase = None


def end_to_end(
    cfg: DictConfig, tables: list[Path], num_items: int, device: torch.device
) -> list[Plugin]:
    """ETEGRec's joint tokenizer, from the folder of the table the run starts from (the
    tokenizer that wrote it); none when the IDs stay fixed (fine-tuning)."""
    if not cfg.trainer.etegrec.joint:
        return []
    return [EndToEnd(cfg, Path(tables[0]).parent, num_items, device)]
