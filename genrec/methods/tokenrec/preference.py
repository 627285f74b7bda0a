"""TokenRec (Qu et al. 2024): one pass from a user's MQ tokens and history to a preference
vector in the LightGCN item space, trained against the items' vectors, and recommendations by
nearest-neighbour search over them (genrec/trainer/retrieval.py) instead of beam search.

The model reads the user's codes before the history (`ModelConfig.user_code_levels`); its
retrieval head is the mean encoder state (or the decoder's first state) through
`embedding_adapter` (`GenerativeRecommender.preference`). What it is trained against comes
from the tokenizer run the ID table belongs to: the item vectors the tokenizer read
(LightGCN's), and the users' codes, from their MQ table or coded from each example's history
by the users' MQ tokenizer (`trainer.tokenrec.user_tokens`). Either way the codes are of a
history propagated one LightGCN step, the vectors the users' MQ was fitted on: a trained
user's validation history (its training sequence) gives the same vector, and codes, in the
table and in `HistoryCoder`.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from genrec.artifacts import ITEM_DEGREES, TOKENIZER_CHECKPOINT, semantic_ids
from genrec.cf.lightgcn import propagated
from genrec.errors import ConfigError, DataError
from genrec.tokenizers.base import Tokenizer
from genrec.tokenizers.checkpoints import load_tokenizer
from genrec.tokenizers.tokenize import load_vectors, tokenizer_input
from genrec.trainer.config import RetrievalLoss, UserTokens
from genrec.trainer.item_codes import ItemCodes, read_table
from genrec.trainer.objective import Batch
from genrec.trainer.retrieval import ApproximateIndex, ExactIndex, Search, Similarity


class UserCoder(Protocol):
    def __call__(self, batch: Batch) -> Tensor:
        """The MQ codes [B, L] of the batch's users."""


@dataclass
class UserTable:
    """The paper's kind of user tokens: each user's row of the MQ users' table, fixed per
    user (a trained user's coded from its whole training history, a held-out user's from its
    history; genrec/cf/lightgcn.py)."""

    codes: Tensor

    def __call__(self, batch: Batch) -> Tensor:
        if batch.user.numel() and int(batch.user.max()) >= len(self.codes):
            raise DataError(
                "tokenizer/users",
                f"user {int(batch.user.max())} has no MQ tokens (the table holds "
                f"{len(self.codes)} users); tokenize again",
            )
        return self.codes[batch.user]


@dataclass
class HistoryCoder:
    """Each example's user tokens from its own history: one LightGCN propagation step from the
    item vectors, coded by the users' MQ tokenizer. Training and evaluation read them alike, so
    no training example's tokens have seen its target."""

    items: Tensor
    degree: Tensor
    tokenizer: Tokenizer

    def __call__(self, batch: Batch) -> Tensor:
        return self.tokenizer.encode(propagated(batch.history, self.items, self.degree))


@dataclass
class Catalogue:
    """The item vectors [N, D] and where the users' codes come from (None: no user tokens)."""

    items: Tensor
    users: UserCoder | None = None

    def user_codes(self, batch: Batch) -> Tensor | None:
        return None if self.users is None else self.users(batch)


def tokenizer_dir(tables: list[Path]) -> Path:
    """The `genrec tokenize` folder an item table was written in (items/semantic_ids.parquet)."""
    return Path(tables[0]).parent.parent


def _required(path: Path, why: str) -> Path:
    if not path.exists():
        raise DataError(str(path), why)
    return path


def user_coder(cfg: DictConfig, folder: Path, items: Tensor, vectors: Path) -> UserCoder | None:
    """The users' codes `trainer.tokenrec.user_tokens` asks for, from the tokenizer run."""
    mode = cfg.trainer.tokenrec.user_tokens
    if mode is UserTokens.none:
        return None
    again = "TokenRec reads the users' MQ tokenizer, and this tokenizer run wrote none; "
    again += "set tokenizer.name=mq (it tokenizes LightGCN's users and items)"
    if mode is UserTokens.table:
        path = _required(semantic_ids(folder, "users"), again)
        rows = pq.read_metadata(path).num_rows
        table = read_table(path, rows, cfg.tokenizer.codebook_size, "user")
        return UserTable(torch.as_tensor(table[:, :-1]).to(items.device))
    tokenizer = load_tokenizer(_required(folder / "users" / TOKENIZER_CHECKPOINT, again))
    degrees = _required(
        vectors.parent / ITEM_DEGREES,
        f"user tokens from histories need the item degrees LightGCN writes beside {vectors.name}; "
        "delete that folder to train LightGCN again",
    )
    degree = np.load(degrees)
    if degree.shape != (len(items),):
        raise DataError(str(degrees), f"holds {degree.shape} degrees for {len(items)} items")
    degree = torch.as_tensor(degree)
    return HistoryCoder(items, degree.to(items.device), tokenizer.to(items.device))


def load_catalogue(cfg: DictConfig, codes: ItemCodes, tables: list[Path]) -> Catalogue:
    """The item vectors and user coder of the run's tokenizer, on the codes' device."""
    folder = tokenizer_dir(tables)
    path = tokenizer_input(folder)
    vectors = load_vectors(path, codes.num_items)
    if vectors.shape[1] != cfg.lightgcn.dim:
        raise ConfigError(
            f"config key 'lightgcn.dim' ({cfg.lightgcn.dim}) sizes the retrieval head, but the "
            f"item vectors {path} have {vectors.shape[1]} dimensions"
        )
    items = torch.as_tensor(np.asarray(vectors)).to(codes.table.device)
    return Catalogue(items, user_coder(cfg, folder, items, path))


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

    Every example is scored against its own target and the same `negatives` uniform draws,
    made once per micro-step and shared by all its examples, for both losses (a draw equal to
    an example's target is masked in that example's row: left out of the softmax, 0 in the
    hinge's mean). An example's loss thus does not depend on which others share its batch:
    1 and 2 workers train alike. The draws come from a generator seeded by the run's seed, the
    same on every rank."""

    catalogue: Catalogue
    loss: RetrievalLoss
    negatives: int
    temperature: float
    margin: float
    similarity: Similarity
    generator: torch.Generator

    def __call__(self, model: torch.nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        users = self.catalogue.user_codes(batch)
        preference = model(batch.history_codes, None, users, prefixes=batch.prefixes)
        target = batch.per_target(batch.target)
        items = self.catalogue.items
        drawn = torch.randint(len(items), (self.negatives,), generator=self.generator)
        drawn = drawn.to(items.device)
        candidates = torch.cat([target[:, None], drawn.expand(len(target), -1)], 1)
        hit = torch.zeros_like(candidates, dtype=torch.bool)
        hit[:, 1:] = candidates[:, 1:] == target[:, None]
        if self.loss is RetrievalLoss.softmax:
            logits = scores_against(preference, items[candidates], self.similarity)
            logits = (logits.float() / self.temperature).masked_fill(hit, float("-inf"))
            loss = F.cross_entropy(logits, torch.zeros_like(target))
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
    """The top-k items' vectors against each user's preference vector, through an index over
    the catalogue's items (every item scored, or an approximate index's neighbours)."""

    catalogue: Catalogue
    index: ExactIndex | ApproximateIndex

    def top_k(self, model: torch.nn.Module, batch: Batch, k: int) -> tuple[Tensor, Tensor]:
        """Scores are the similarities (cosine or dot) to the preference vector."""
        check_head(model, self.catalogue)
        preference = model(batch.history_codes, None, self.catalogue.user_codes(batch))
        scores, items = self.index.search(preference, k)
        return items.to(preference.device), scores.to(preference.device)


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
    settings = cfg.trainer.tokenrec
    catalogue = load_catalogue(cfg, codes, tables)
    if settings.search is Search.hnsw:
        vectors = tokenizer_input(tokenizer_dir(tables))
        items = catalogue.items.cpu().numpy()
        index = ApproximateIndex(items, settings.similarity, folder=vectors.parent)
    else:
        index = ExactIndex(catalogue.items, settings.similarity)
    return RetrievalRanker(catalogue, index)
