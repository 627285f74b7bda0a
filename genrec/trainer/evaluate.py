"""Full-ranking evaluation of a recommender through its method's ranker (beam search for the
generative methods).

A target's rank is its position in the user's top-k list; a target outside the list counts as
a miss for every K up to k, so Recall/NDCG@K are exact for K <= k (`evaluate.beam_size`).
"""

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from genrec.cf.popularity import popularity_metrics
from genrec.data_pipeline.prepared import EvalSet, load_prepared
from genrec.errors import DataError
from genrec.metrics import KS, ranking_metrics, ranks_in_lists
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


def eval_batches(
    split: EvalSet,
    codes: ItemCodes,
    batch_size: int,
    desc: str | None = None,
    groups: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, Batch]]:
    """(rows, batch) over a split, row r read in code group `groups[r]` (default: group 0);
    a progress bar when `desc` is given."""
    starts = range(0, split.targets.size, batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None):
        rows = np.arange(start, min(start + batch_size, split.targets.size))
        columns = {
            "user": torch.as_tensor(split.users[rows]),
            "history": left_padded(split.offsets, split.history, rows),
            "target": torch.as_tensor(split.targets[rows]),
            "group": torch.as_tensor(0 if groups is None else groups[rows]).expand(rows.size),
        }
        yield rows, Batch.coded(columns, codes, codes.table.device)


@torch.no_grad()
def split_metrics(
    model: torch.nn.Module,
    ranker: Ranker,
    codes: ItemCodes,
    split: EvalSet,
    k: int,
    batch_size: int,
    progress: bool = True,
) -> dict[str, float]:
    """Recall and NDCG at every K up to k, from each target's rank in its top-k list."""
    was_training = model.training
    model.eval()
    ranks = []
    desc = f"rank {split.name}" if progress else None
    for rows, batch in eval_batches(split, codes, batch_size, desc):
        items = ranker.top_k(model, batch, k)
        ranks.append(ranks_in_lists(items.cpu().numpy(), split.targets[rows]))
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
) -> dict[str, Any]:
    """Valid and test metrics of a saved model, read with the semantic-ID tables it was trained
    on (`tables`, group 0 decoded), beside `baselines` (and popularity where
    `evaluate.baselines` names it), written to `out` (JSON).

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
    device = resolve_device(cfg.trainer.device)
    model, saved = load_model(checkpoint, method.build_model, device)
    if saved.get("semantic_ids", table_digests(tables)) != table_digests(tables):
        raise DataError(
            str(tables[0]),
            f"differs from the semantic IDs {checkpoint} was trained on; evaluate it "
            "with the tokenizer config it was trained with",
        )
    data = load_prepared(data_dir)
    codes = ItemCodes.load(tables, data.num_items, model.config.codebook_size).to(device)
    ranker = method.ranker(cfg, codes, tables)
    k, batch = cfg.evaluate.beam_size, cfg.evaluate.batch_size
    splits = [data.valid, data.test] + ([data.holdout] if data.holdout is not None else [])
    metrics = {split.name: split_metrics(model, ranker, codes, split, k, batch) for split in splits}
    popular = {}
    if Baseline.popularity in cfg.evaluate.baselines:
        popular["popularity"] = popularity_metrics(data)
    result = {
        **metrics,
        "baselines": {**popular, **baselines},
        "method": method.name,
        "checkpoint": str(checkpoint),
        "trained_steps": saved.get("step"),
        "beam_size": k,
        "parameters": model.num_parameters(),
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
