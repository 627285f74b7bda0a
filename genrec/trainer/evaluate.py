"""Full-ranking evaluation of a generative recommender through constrained beam search.

A target's rank is its position in the user's beam; a target outside the beam counts as a
miss for every K up to the beam width, so Recall/NDCG@K are exact for K <= beam_size.
"""

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from genrec.data_pipeline.prepare import load_manifest
from genrec.errors import DataError
from genrec.metrics import KS, ranking_metrics, ranks_in_lists
from genrec.provenance import code_version, file_digest, fingerprint, to_plain, write_json
from genrec.tokenizers.cf_training import EvalSet, load_cf_data, popularity_metrics
from genrec.tokenizers.tokenize import SEMANTIC_IDS
from genrec.trainer.beam_search import beam_search
from genrec.trainer.checkpoint import load_model
from genrec.trainer.engine import resolve_device
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, code_cross_entropy
from genrec.trainer.trie import ItemTrie

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


def take_rows(split: EvalSet, rows: np.ndarray) -> EvalSet:
    """The given users of a split, in the order given."""
    starts, stops = split.offsets[rows], split.offsets[rows + 1]
    offsets = np.concatenate([[0], np.cumsum(stops - starts)])
    parts = [split.history[a:b] for a, b in zip(starts, stops, strict=True)]
    history = np.concatenate(parts) if parts else split.history[:0]
    return EvalSet(split.name, split.users[rows], offsets, history, split.targets[rows])


def subsample(split: EvalSet, users: int, seed: int) -> EvalSet:
    """A fixed random subset of a split (all of it when users <= 0), order kept."""
    if users <= 0 or users >= split.users.size:
        return split
    rows = np.sort(np.random.default_rng(seed).choice(split.users.size, users, replace=False))
    return take_rows(split, rows)


@torch.no_grad()
def split_metrics(
    model: GenerativeRecommender,
    codes: ItemCodes,
    trie: ItemTrie,
    split: EvalSet,
    beam_size: int,
    batch_size: int,
    progress: bool = True,
) -> dict[str, float]:
    """Recall and NDCG at every K up to the beam width, from each target's rank in its beam."""
    device = codes.table.device
    was_training = model.training
    model.eval()
    ranks = []
    batches = range(0, split.targets.size, batch_size)
    for start in tqdm(batches, desc=f"beam search {split.name}", disable=not progress):
        rows = np.arange(start, min(start + batch_size, split.targets.size))
        history = codes(left_padded(split.offsets, split.history, rows).to(device))
        users = torch.as_tensor(split.users[rows], device=device)
        user = users if model.config.num_user_buckets else None
        items, _ = beam_search(model, trie, history, beam_size, user)
        ranks.append(ranks_in_lists(items.cpu().numpy(), split.targets[rows]))
    model.train(was_training)
    return ranking_metrics(np.concatenate(ranks), tuple(k for k in KS if k <= beam_size))


@torch.no_grad()
def split_loss(
    model: GenerativeRecommender, codes: ItemCodes, split: EvalSet, batch_size: int
) -> float:
    """Teacher-forced cross-entropy of the split's targets: a smooth signal beside the ranks."""
    device = codes.table.device
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, split.targets.size, batch_size):
        rows = np.arange(start, min(start + batch_size, split.targets.size))
        history = codes(left_padded(split.offsets, split.history, rows).to(device))
        target = codes(torch.as_tensor(split.targets[rows], device=device))
        user = torch.as_tensor(split.users[rows], device=device)
        logits = model(history, target, user if model.config.num_user_buckets else None)
        total += code_cross_entropy(logits, target).item() * rows.size
    model.train(was_training)
    return total / max(split.targets.size, 1)


def evaluate_checkpoint(
    cfg: DictConfig,
    checkpoint: Path,
    data_dir: Path,
    tokenizer_dir: Path,
    baselines: dict[str, dict[str, Any]],
    out: Path,
) -> dict[str, Any]:
    """Valid and test metrics of a saved model beside the baselines, written to `out` (JSON).

    Reuses `out` when the checkpoint, baselines and evaluation settings are unchanged.
    """
    key = fingerprint(file_digest(checkpoint), to_plain(cfg.evaluate), baselines)
    try:
        previous = json.loads(Path(out).read_text())
        if previous["fingerprint"] == key:
            log.info("evaluate: reusing %s", out)
            return previous
    except (OSError, ValueError, KeyError):
        pass
    device = resolve_device(cfg.trainer.device)
    model, saved = load_model(checkpoint, device)
    ids = tokenizer_dir / "items" / SEMANTIC_IDS
    if saved.get("semantic_ids", file_digest(ids)) != file_digest(ids):
        raise DataError(
            str(ids),
            f"differs from the semantic IDs {checkpoint} was trained on; evaluate it "
            "with the tokenizer config it was trained with",
        )
    num_items = load_manifest(data_dir)["num_items"]
    codes = ItemCodes.load(ids, num_items, model.config.codebook_size).to(device)
    trie = ItemTrie.from_codes(codes.table.cpu()).to(device)
    beam, batch = cfg.evaluate.beam_size, cfg.evaluate.batch_size
    data = load_cf_data(data_dir)
    metrics = {
        split.name: split_metrics(model, codes, trie, split, beam, batch)
        for split in (data.valid, data.test)
    }
    result = {
        **metrics,
        "baselines": {"popularity": popularity_metrics(data), **baselines},
        "method": saved.get("config", {}).get("method"),
        "checkpoint": str(checkpoint),
        "trained_steps": saved.get("step"),
        "beam_size": beam,
        "parameters": model.num_parameters(),
        "fingerprint": key,
        "config": to_plain(cfg),
        "code": code_version(),
    }
    write_json(out, result)
    return result
