"""TokenRec (Qu et al. 2024): one pass from a user's MQ tokens and history to a preference
vector in the LightGCN item space, trained against the items' vectors, and recommendations by
nearest-neighbour search over them (genrec/trainer/retrieval.py) instead of beam search.

The model reads the user's codes before the history (`ModelConfig.user_code_levels`); its
retrieval head is the decoder's first state through `embedding_adapter`
(`GenerativeRecommender.preference`). What it is trained against comes from the tokenizer run
the ID table belongs to: the users' MQ table beside the items', and the item vectors the
tokenizer read (LightGCN's).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from genrec.artifacts import semantic_ids
from genrec.errors import ConfigError, DataError
from genrec.tokenizers.tokenize import load_vectors
from genrec.trainer.config import RetrievalLoss
from genrec.trainer.end_to_end import tokenizer_input
from genrec.trainer.item_codes import ItemCodes, read_table
from genrec.trainer.objective import Batch
from genrec.trainer.retrieval import Similarity, exact_top_k


@dataclass
class Catalogue:
    """The users' codes [U, L] (None: the model reads no user) and the item vectors [N, D]."""

    user_codes: Tensor | None
    items: Tensor

    def users(self, user: Tensor) -> Tensor | None:
        """Codes of the users `user` [B]; a clear error for a user the tokenizer never saw."""
        if self.user_codes is None:
            return None
        if user.numel() and int(user.max()) >= len(self.user_codes):
            raise DataError(
                "tokenizer/users",
                f"user {int(user.max())} has no MQ tokens (the table holds "
                f"{len(self.user_codes)} users); tokenize again",
            )
        return self.user_codes[user]


def tokenizer_dir(tables: list[Path]) -> Path:
    """The `genrec tokenize` folder an item table was written in (items/semantic_ids.parquet)."""
    return Path(tables[0]).parent.parent


def load_catalogue(cfg: DictConfig, codes: ItemCodes, tables: list[Path]) -> Catalogue:
    """The user codes and item vectors of the run's tokenizer, on the codes' device."""
    folder = tokenizer_dir(tables)
    path = tokenizer_input(folder)
    items = load_vectors(path, codes.num_items)
    if items.shape[1] != cfg.lightgcn.dim:
        raise ConfigError(
            f"config key 'lightgcn.dim' ({cfg.lightgcn.dim}) sizes the retrieval head, but the "
            f"item vectors {path} have {items.shape[1]} dimensions"
        )
    user_codes = None
    if cfg.trainer.tokenrec.user_tokens:
        path = semantic_ids(folder, "users")
        if not path.exists():
            raise DataError(
                str(path),
                "TokenRec reads the users' MQ tokens, and this tokenizer run wrote none; "
                "set tokenizer.name=mq (it tokenizes LightGCN's users and items)",
            )
        rows = pq.read_metadata(path).num_rows
        table = read_table(path, rows, cfg.tokenizer.codebook_size, "user")
        user_codes = torch.as_tensor(table[:, :-1])
    device = codes.table.device
    return Catalogue(
        None if user_codes is None else user_codes.to(device),
        torch.as_tensor(np.asarray(items)).to(device),
    )


def check_head(model: torch.nn.Module, catalogue: Catalogue) -> None:
    """The retrieval head must project into the item space it is scored against."""
    head = model.config.embedding_adapter_dim
    if head != catalogue.items.size(1):
        raise ValueError(
            f"the retrieval head projects into {head} dimensions, the item vectors have "
            f"{catalogue.items.size(1)}; train and evaluate with the same lightgcn.dim"
        )


@dataclass
class RetrievalLossFn:
    """The preference vector against the target's item vector and sampled negatives.

    Every example is scored against its own target and the micro-step's `negatives` uniform
    draws (a draw equal to the target is masked), so an example's loss does not depend on
    which others share its batch: 1 and 2 workers train alike. The draws come from a generator
    seeded by the run's seed, the same on every rank."""

    catalogue: Catalogue
    loss: RetrievalLoss
    negatives: int
    temperature: float
    margin: float
    similarity: Similarity
    generator: torch.Generator

    def __call__(self, model: torch.nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        preference = model(batch.history_codes, None, self.catalogue.users(batch.user))
        items = self.catalogue.items
        drawn = torch.randint(len(items), (self.negatives,), generator=self.generator)
        drawn = drawn.to(items.device)
        candidates = torch.cat([batch.target[:, None], drawn.expand(len(batch.target), -1)], 1)
        hit = torch.zeros_like(candidates, dtype=torch.bool)
        hit[:, 1:] = candidates[:, 1:] == batch.target[:, None]
        if self.loss is RetrievalLoss.softmax:
            logits = scores_against(preference, items[candidates], self.similarity)
            logits = (logits.float() / self.temperature).masked_fill(hit, float("-inf"))
            loss = F.cross_entropy(logits, torch.zeros_like(batch.target))
        else:
            cosine = F.cosine_similarity(preference[:, None], items[candidates], dim=-1)
            hinge = (cosine[:, 1:] - self.margin).clamp(min=0).masked_fill(hit[:, 1:], 0.0)
            loss = (1 - cosine[:, 0]).mean() + hinge.mean()
        return loss, {"retrieval": loss.detach()}


def scores_against(preference: Tensor, candidates: Tensor, similarity: Similarity) -> Tensor:
    """Scores [B, C] of each preference [B, D] against its own candidates [B, C, D]."""
    if similarity is Similarity.cosine:
        preference, candidates = F.normalize(preference, dim=-1), F.normalize(candidates, dim=-1)
    return torch.einsum("bd,bcd->bc", preference, candidates)


@dataclass
class RetrievalRanker:
    """Exact top-k of every item's vector against each user's preference vector."""

    catalogue: Catalogue
    similarity: Similarity

    def top_k(self, model: torch.nn.Module, history_codes: Tensor, user: Tensor, k: int) -> Tensor:
        check_head(model, self.catalogue)
        preference = model(history_codes, None, self.catalogue.users(user))
        return exact_top_k(preference, self.catalogue.items, k, self.similarity)[1]


def retrieval_loss(cfg: DictConfig, codes: ItemCodes, tables: list[Path]) -> RetrievalLossFn:
    settings = cfg.trainer.tokenrec
    return RetrievalLossFn(
        load_catalogue(cfg, codes, tables),
        settings.loss,
        settings.negatives,
        settings.temperature,
        settings.margin,
        settings.similarity,
        torch.Generator().manual_seed(cfg.seed),
    )


def retrieval(cfg: DictConfig, codes: ItemCodes, tables: list[Path]) -> RetrievalRanker:
    if cfg.evaluate.beam_size > codes.num_items:
        raise ConfigError(
            f"config key 'evaluate.beam_size' ({cfg.evaluate.beam_size}) asks for more items "
            f"than the catalogue's {codes.num_items}"
        )
    return RetrievalRanker(load_catalogue(cfg, codes, tables), cfg.trainer.tokenrec.similarity)
