"""Full-ranking evaluation of a recommender through its method's ranker (beam search for the
generative methods).

A target's rank is its position in the user's top-k list; a target outside the list counts as
a miss for every K up to k, so Recall/NDCG@K are exact for K <= k (`evaluate.beam_size`).
"""

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from genrec.cf.popularity import popularity_metrics
from genrec.data_pipeline.prepared import EvalSet, load_prepared
from genrec.errors import DataError
from genrec.metrics import KS, ranking_metrics, ranks_in_lists, sample_interval
from genrec.provenance import (
    code_version,
    file_digest,
    fingerprint,
    made_with,
    to_plain,
    write_json,
)
from genrec.trainer.checkpoint import load_model
from genrec.trainer.config import Baseline
from genrec.trainer.engine import resolve_device
from genrec.trainer.hooks import MethodHooks
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.objective import Batch, Objective
from genrec.trainer.ranking import Ranker

log = logging.getLogger(__name__)


def left_padded(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """Rows of a CSR list array as [len(rows), longest], newest item last, -1 before."""
    starts, stops = offsets[rows], offsets[rows + 1]
    lengths = stops - starts
    width = max(int(lengths.max(initial=0)), 1)
    column = np.arange(width)[None, :] - (width - lengths)[:, None]
    index = np.clip(starts[:, None] + column, 0, max(len(values) - 1, 0))
    padded = np.where(column >= 0, values[index] if len(values) else -1, -1)
    return torch.as_tensor(padded, dtype=torch.long)


def split_batch(split: EvalSet, rows: np.ndarray, codes: ItemCodes, group: Any = 0) -> Batch:
    """The split's `rows` as one batch, each read in code group `group` (one or per row)."""
    columns = {
        "user": torch.as_tensor(split.users[rows]),
        "history": left_padded(split.offsets, split.history, rows),
        "target": torch.as_tensor(split.targets[rows]),
        "group": torch.as_tensor(group).expand(rows.size),
    }
    return Batch.coded(columns, codes, codes.table.device)


def batch_rows(size: int, batch_size: int) -> Iterator[np.ndarray]:
    """Row indices of a split's batches, in order: the same cut in one process or many."""
    for start in range(0, size, batch_size):
        yield np.arange(start, min(start + batch_size, size))


def eval_batches(
    split: EvalSet,
    codes: ItemCodes,
    batch_size: int,
    desc: str | None = None,
    groups: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, Batch]]:
    """(rows, batch) over a split, row r read in code group `groups[r]` (default: group 0);
    a progress bar when `desc` is given."""
    batches = batch_rows(split.targets.size, batch_size)
    total = -(-split.targets.size // batch_size)
    for rows in tqdm(batches, total=total, desc=desc, disable=desc is None):
        yield rows, split_batch(split, rows, codes, 0 if groups is None else groups[rows])


@dataclass
class RankingModel:
    """A saved model ready to rank users with its method's ranker, on one device."""

    model: torch.nn.Module
    codes: ItemCodes
    ranker: Ranker
    saved: dict[str, Any]

    @torch.no_grad()
    def top_k(self, split: EvalSet, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, scores) [len(rows), k] of the split's rows, best first."""
        items, scores = self.ranker.top_k(self.model, split_batch(split, rows, self.codes), k)
        return items.cpu().numpy(), scores.float().cpu().numpy()

    def ranks(self, split: EvalSet, rows: np.ndarray, k: int) -> np.ndarray:
        """Each row's target's place in its top-k list (k where it is missing)."""
        return ranks_in_lists(self.top_k(split, rows, k)[0], split.targets[rows])


def load_ranking_model(
    cfg: DictConfig,
    method: MethodHooks,
    checkpoint: Path,
    tables: list[Path],
    num_items: int,
    device: torch.device,
) -> RankingModel:
    """The model of `checkpoint`, read with the semantic-ID tables it was trained on (group 0
    decoded): other tables are an error naming the file."""
    model, saved = load_model(checkpoint, method.build_model, device)
    if saved.get("semantic_ids", table_digests(tables)) != table_digests(tables):
        raise DataError(
            str(tables[0]),
            f"differs from the semantic IDs {checkpoint} was trained on; evaluate it "
            "with the tokenizer config it was trained with",
        )
    codes = ItemCodes.load(tables, num_items, model.config.codebook_size).to(device)
    return RankingModel(model, codes, method.ranker(cfg, codes, tables), saved)


class SplitRanker(Protocol):
    def ranks(self, splits: list[EvalSet], k: int) -> list[np.ndarray]:
        """Each split's targets' ranks in their top-k lists, in the split's row order."""


@dataclass
class LocalRanks:
    """Ranks in this process, a batch of `batch_size` users at a time."""

    ranking: RankingModel
    batch_size: int

    def ranks(self, splits: list[EvalSet], k: int) -> list[np.ndarray]:
        out = []
        for split in splits:
            total = -(-split.users.size // self.batch_size)
            batches = batch_rows(split.users.size, self.batch_size)
            bar = tqdm(batches, total=total, desc=f"rank {split.name}")
            parts = [self.ranking.ranks(split, rows, k) for rows in bar]
            out.append(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
        return out


@torch.no_grad()
def split_metrics(
    model: torch.nn.Module,
    ranker: Ranker,
    codes: ItemCodes,
    split: EvalSet,
    k: int,
    batch_size: int,
) -> dict[str, float]:
    """Recall and NDCG at every K up to k of a model in training (validation)."""
    was_training = model.training
    model.eval()
    ranking = RankingModel(model, codes, ranker, {})
    ranks = [ranking.ranks(split, rows, k) for rows in batch_rows(split.targets.size, batch_size)]
    model.train(was_training)
    return ranking_metrics(np.concatenate(ranks), tuple(x for x in KS if x <= k))


@torch.no_grad()
def split_loss(
    model: torch.nn.Module, objective: Objective, codes: ItemCodes, split: EvalSet, batch_size: int
) -> float:
    """The training objective on the split's targets: a smooth signal beside the ranks."""
    was_training = model.training
    model.eval()
    total = 0.0
    for rows, batch in eval_batches(split, codes, batch_size):
        total += objective(model, batch)[0].item() * rows.size
    model.train(was_training)
    return total / max(split.targets.size, 1)


def table_digests(paths: list[Path]) -> list[str]:
    return [file_digest(path) for path in paths]


def evaluate_checkpoint(
    cfg: DictConfig,
    method: MethodHooks,
    checkpoint: Path,
    data_dir: Path,
    tables: list[Path],
    baselines: dict[str, dict[str, Any]],
    out: Path,
    pool: SplitRanker | None = None,
) -> dict[str, Any]:
    """Valid and test metrics of a saved model, read with the semantic-ID tables it was trained
    on (`tables`, group 0 decoded), beside `baselines` (and popularity where
    `evaluate.baselines` names it), written to `out` (JSON). The users are ranked by `pool`
    (genrec/cluster/rank_pool.py: a Ray actor pool), or in this process without one. The
    test split is every user, or a seeded sample of `evaluate.test_users` with each metric's
    95% interval beside it.

    Reuses `out` when the checkpoint, baselines and evaluation settings are unchanged.
    """
    key = fingerprint(
        file_digest(checkpoint),
        table_digests(tables),
        to_plain(cfg.evaluate),
        baselines,
        method.name,
    )
    if made_with(out, key):
        log.info("evaluate: reusing %s", out)
        return json.loads(Path(out).read_text())
    data = load_prepared(data_dir)
    device = resolve_device(cfg.trainer.device)
    ranking = load_ranking_model(cfg, method, checkpoint, tables, data.num_items, device)
    pool = pool or LocalRanks(ranking, cfg.evaluate.batch_size)
    k, ks = cfg.evaluate.beam_size, tuple(x for x in KS if x <= cfg.evaluate.beam_size)
    test = data.test.subsample(cfg.evaluate.test_users, cfg.seed)
    splits = [data.valid, test] + ([data.holdout] if data.holdout is not None else [])
    split_ranks = dict(zip([s.name for s in splits], pool.ranks(splits, k), strict=True))
    metrics = {name: ranking_metrics(r, ks) for name, r in split_ranks.items()}
    sampled = {}
    if test.users.size < data.test.users.size:
        interval = sample_interval(split_ranks["test"], data.test.users.size, ks)
        sampled = {"test_users": int(test.users.size), "test_interval": interval}
    popular = {}
    if Baseline.popularity in cfg.evaluate.baselines:
        popular["popularity"] = popularity_metrics(data)
    result = {
        **metrics,
        **sampled,
        "baselines": {**popular, **baselines},
        "method": method.name,
        "checkpoint": str(checkpoint),
        "trained_steps": ranking.saved.get("step"),
        "beam_size": k,
        "parameters": ranking.model.num_parameters(),
        "fingerprint": key,
        "config": to_plain(cfg),
        "code": code_version(),
    }
    write_json(out, result)
    return result


def tables_of(checkpoint: Path, tables: list[Path]) -> list[Path]:
    """Those of `tables` a saved model was trained on, in its order (all of them when some are
    missing: the digest check of `evaluate_checkpoint` then names the mismatch)."""
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["semantic_ids"]
    except (OSError, RuntimeError, KeyError, EOFError) as err:
        raise DataError(str(checkpoint), f"not a genrec model checkpoint: {err}") from err
    by_digest = {file_digest(path): path for path in tables}
    return [by_digest[d] for d in saved] if all(d in by_digest for d in saved) else tables
