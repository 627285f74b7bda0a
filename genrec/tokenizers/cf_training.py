"""What the collaborative-filtering embedding models (SASRec, LightGCN) share.

Both train on the leave-one-out training sequences, rank every item for one target per user,
compare against item popularity, stop early on validation NDCG@10 and write their outputs once,
atomically, keyed by a fingerprint so an unchanged rerun is free. Each model supplies only a
`CFTrainer`: how to train one epoch, score a split and export its vectors.
"""

import logging
import math
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.preprocess import ragged_gather
from genrec.errors import ConfigError, DataError
from genrec.metrics import ranking_metrics, target_ranks
from genrec.provenance import (
    atomic_dir,
    code_version,
    fingerprint,
    made_with,
    to_plain,
    write_json,
)

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pt"
EVAL_BATCH = 1024
SELECT_METRIC = "ndcg@10"

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """One evaluation example per user: user id, history (CSR) and target item."""

    name: str
    users: np.ndarray
    offsets: np.ndarray
    history: np.ndarray
    targets: np.ndarray


@dataclass
class CFData:
    """A prepared dataset as the CF models see it: training sequences (CSR) and eval splits."""

    data_dir: Path
    manifest: dict[str, Any]
    train_offsets: np.ndarray
    train_items: np.ndarray
    valid: EvalSet
    test: EvalSet

    @property
    def num_users(self) -> int:
        return int(self.manifest["num_users"])

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    def item_counts(self) -> np.ndarray:
        """Training interactions per item: the popularity baseline's scores."""
        return np.bincount(self.train_items, minlength=self.num_items)


def _csr(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    lists = column.combine_chunks()
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return offsets, pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)


def load_eval_set(data_dir: Path, name: str) -> EvalSet:
    """A split with its examples ordered by history length: metrics are means, so order is
    free, and batches of similar lengths let sequence models cut most of the padding."""
    table = pq.read_table(data_dir / f"{name}.parquet")
    offsets, history = _csr(table.column("history"))
    order = np.argsort(np.diff(offsets), kind="stable")
    offsets, history = ragged_gather(history, offsets[:-1][order], offsets[1:][order])
    users = table.column("user").to_numpy().astype(np.int64)[order]
    targets = table.column("target").to_numpy().astype(np.int64)[order]
    return EvalSet(name, users, offsets, history, targets)


def load_cf_data(data_dir: Path) -> CFData:
    """Read a `genrec prepare` output; training = each user's sequence minus its last two."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    table = pq.read_table(data_dir / "sequences.parquet")
    users = table.column("user").to_numpy()
    if not np.array_equal(users, np.arange(manifest["num_users"])):
        raise DataError(str(data_dir / "sequences.parquet"), "rows are not users 0..n-1 in order")
    offsets, items = _csr(table.column("items"))
    train_offsets, train_items = ragged_gather(items, offsets[:-1], offsets[1:] - 2)
    return CFData(
        data_dir,
        manifest,
        train_offsets,
        train_items,
        load_eval_set(data_dir, "valid"),
        load_eval_set(data_dir, "test"),
    )


def full_ranking_metrics(
    score: Callable[[np.ndarray], torch.Tensor], targets: np.ndarray
) -> dict[str, float]:
    """Recall/NDCG of each target among all items; `score(rows)` gives [len(rows), num_items]."""
    ranks = []
    for start in range(0, targets.size, EVAL_BATCH):
        rows = np.arange(start, min(start + EVAL_BATCH, targets.size))
        scores = score(rows)
        ranks.append(target_ranks(scores, torch.as_tensor(targets[rows], device=scores.device)))
    return ranking_metrics(torch.cat(ranks).cpu().numpy())


def split_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`order` cut into consecutive batches of at most batch_size (near-equal sizes)."""
    return np.array_split(order, max(1, math.ceil(order.size / batch_size)))


def popularity_metrics(data: CFData) -> dict[str, dict[str, float]]:
    """The baseline every CF model must beat: rank items by training-interaction count."""
    counts = torch.as_tensor(data.item_counts(), dtype=torch.float32)
    return {
        split.name: full_ranking_metrics(lambda rows: counts.expand(rows.size, -1), split.targets)
        for split in (data.valid, data.test)
    }


class CFTrainer(Protocol):
    """One model's part of training; the shared loop drives it."""

    model: nn.Module

    def train_epoch(self) -> float:
        """One pass over the training data; returns the mean loss."""

    def scores(self, split: EvalSet, rows: np.ndarray) -> torch.Tensor:
        """Scores [len(rows), num_items] for the given examples of a split."""

    def export(self, out_dir: Path) -> None:
        """Write the model's embeddings (.npy) into out_dir."""


@dataclass
class FitResult:
    epochs: int
    best_epoch: int
    valid: dict[str, float]


def evaluate(trainer: CFTrainer, split: EvalSet) -> dict[str, float]:
    trainer.model.eval()
    with torch.no_grad():
        return full_ranking_metrics(lambda rows: trainer.scores(split, rows), split.targets)


def fit(
    trainer: CFTrainer, valid: EvalSet, schedule: DictConfig, writer: SummaryWriter
) -> FitResult:
    """Train up to `schedule.epochs`, validating every `eval_every` epochs (and after the last).

    Stops after `patience` validations without a better NDCG@10 and restores the best weights.
    """
    best = FitResult(0, 0, {SELECT_METRIC: -1.0})
    best_state: dict[str, torch.Tensor] = {}
    stale = 0
    name = type(trainer.model).__name__
    with tqdm(range(1, schedule.epochs + 1), desc=name, unit="epoch") as bar:
        for epoch in bar:
            trainer.model.train()
            loss = trainer.train_epoch()
            writer.add_scalar("train/loss", loss, epoch)
            bar.set_postfix(loss=f"{loss:.4f}", best_ndcg10=f"{best.valid[SELECT_METRIC]:.4f}")
            if epoch % schedule.eval_every and epoch != schedule.epochs:
                continue
            metrics = evaluate(trainer, valid)
            for key in ("recall@10", SELECT_METRIC):
                writer.add_scalar(f"valid/{key}", metrics[key], epoch)
            if metrics[SELECT_METRIC] > best.valid[SELECT_METRIC]:
                best, stale = FitResult(epoch, epoch, metrics), 0
                best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            else:
                stale += 1
                if stale >= schedule.patience:
                    break
    trainer.model.load_state_dict(best_state)
    best.epochs = epoch
    return best


def run_fingerprint(data: CFData, model_cfg: DictConfig, seed: int) -> str:
    return fingerprint(data.manifest["fingerprint"], to_plain(model_cfg), seed)


def train_cf_model(
    name: str,
    cfg: DictConfig,
    data_dir: Path,
    out_dir: Path,
    make_trainer: Callable[[CFData, DictConfig, np.random.Generator], CFTrainer],
) -> Path:
    """Train the model configured at `cfg[name]` (or reuse out_dir) and write its outputs.

    out_dir gets the trainer's embeddings, model.pt (state dict + what built it), metrics.json
    (best-epoch validation, test with the best weights, popularity) and TensorBoard logs in tb/.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    model_cfg = cfg[name]
    for key in ("epochs", "eval_every", "patience", "batch_size"):
        if model_cfg[key] < 1:
            raise ConfigError(f"config key '{name}.{key}' must be >= 1, got {model_cfg[key]}")
    data = load_cf_data(data_dir)
    key = run_fingerprint(data, model_cfg, cfg.seed)
    if made_with(out_dir / METRICS_FILE, key):
        log.info("%s: reused %s (fingerprint %s)", name, out_dir, key)
        return out_dir
    torch.manual_seed(cfg.seed)
    trainer = make_trainer(data, model_cfg, np.random.default_rng(cfg.seed))
    with atomic_dir(out_dir) as scratch:
        with closing(SummaryWriter(str(scratch / "tb"))) as writer:
            result = fit(trainer, data.valid, model_cfg, writer)
        test = evaluate(trainer, data.test)
        trainer.export(scratch)
        checkpoint = {
            "state_dict": trainer.model.state_dict(),
            "num_users": data.num_users,
            "num_items": data.num_items,
            "config": to_plain(model_cfg),
        }
        torch.save(checkpoint, scratch / MODEL_FILE)
        metrics = {
            "valid": result.valid,
            "test": test,
            "popularity": popularity_metrics(data),
            "epochs": result.epochs,
            "best_epoch": result.best_epoch,
            "fingerprint": key,
            "data_fingerprint": data.manifest["fingerprint"],
            "config": to_plain(cfg),
            "code": code_version(),
        }
        write_json(scratch / METRICS_FILE, metrics)
    log.info(
        "%s: test recall@10 %.4f ndcg@10 %.4f (best epoch %d of %d) -> %s",
        name,
        test["recall@10"],
        test["ndcg@10"],
        result.best_epoch,
        result.epochs,
        out_dir,
    )
    return out_dir
