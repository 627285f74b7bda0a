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
from typing import Protocol

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from genrec.artifacts import CF_METRICS, MODEL, SELECT_METRIC
from genrec.cf.config import UNUSED_UNLESS
from genrec.cf.popularity import popularity_metrics
from genrec.data_pipeline.prepared import EvalSet, PreparedData, load_prepared
from genrec.metrics import dot_product_ranks, ranking_metrics
from genrec.provenance import (
    atomic_dir,
    code_version,
    fingerprint,
    made_with,
    to_plain,
    write_json,
)

log = logging.getLogger(__name__)


def split_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`order` cut into consecutive batches of at most batch_size (near-equal sizes)."""
    return np.array_split(order, max(1, math.ceil(order.size / batch_size)))


class CFTrainer(Protocol):
    """One model's part of training; the shared loop drives it."""

    model: nn.Module

    def train_epoch(self) -> float:
        """One pass over the training data; returns the mean loss."""

    def vectors(self, split: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Each of the split's users' query vector [users, d] and every item's [items, d]: a
        score is their dot product."""

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
        queries, items = trainer.vectors(split)
        return ranking_metrics(dot_product_ranks(queries, items, torch.from_numpy(split.targets)))


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


def run_fingerprint(
    data: PreparedData, model_cfg: DictConfig, seed: int, export_format: int
) -> str:
    """The data, the settings the weights depend on (a key of `UNUSED_UNLESS` only when the
    setting it serves is chosen), the seed and the export format."""
    settings = to_plain(model_cfg)
    for key, (other, value) in UNUSED_UNLESS.items():
        if key in settings and model_cfg[other] != value:
            del settings[key]
    return fingerprint(data.manifest["fingerprint"], settings, seed, export_format)


def train_cf_model(
    name: str,
    cfg: DictConfig,
    data_dir: Path,
    out_dir: Path,
    make_trainer: Callable[[PreparedData, DictConfig, np.random.Generator], CFTrainer],
    export_format: int = 1,
) -> Path:
    """Train the model configured at `cfg[name]` (or reuse out_dir) and write its outputs.
    `export_format` is bumped when the trainer exports other files or vectors of another
    meaning, so that a folder written before is not reused (the fingerprint holds it).

    out_dir gets the trainer's embeddings, model.pt (state dict + what built it), metrics.json
    (best-epoch validation, test with the best weights, popularity) and TensorBoard logs in tb/.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    model_cfg = cfg[name]
    data = load_prepared(data_dir)
    key = run_fingerprint(data, model_cfg, cfg.seed, export_format)
    if made_with(out_dir / CF_METRICS, key):
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
        torch.save(checkpoint, scratch / MODEL)
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
        write_json(scratch / CF_METRICS, metrics)
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
