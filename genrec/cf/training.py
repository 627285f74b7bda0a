"""What the collaborative-filtering embedding models (SASRec, LightGCN) share.

Both train on the leave-one-out training sequences, rank every item for one target per user,
compare against item popularity, stop early on validation NDCG@10 and write their outputs once,
atomically, keyed by a fingerprint so an unchanged rerun is free. Each model supplies only a
`CFTrainer`: how to train one epoch, score a split and export its vectors.

They train in this process, or on Ray Train workers (genrec/cluster/cf_job.py) passed in as a
`Runner`: each worker then trains its `Shard` of every batch, data-parallel, and rank 0 writes.
"""

import json
import logging
import math
from collections.abc import Callable
from contextlib import closing, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from genrec.artifacts import CF_METRICS, MODEL, SELECT_METRIC
from genrec.cf.config import UNUSED_UNLESS
from genrec.cf.popularity import popularity_metrics
from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.prepared import EvalSet, PreparedData, load_prepared
from genrec.errors import TrainingFailed
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


@dataclass(frozen=True)
class Shard:
    """This process's part of data-parallel training among `world` ranks (torch.distributed):
    each batch (its rows the same on every rank) is cut into `world` near-equal parts, each rank
    trains on its own and the gradients are averaged, so the ranks step as one process would on
    the whole batch. Rank 0 alone validates and decides when to stop."""

    rank: int = 0
    world: int = 1

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.array_split(rows, self.world)[self.rank]

    def average(self, model: nn.Module) -> None:
        """The ranks' mean gradient, on every rank (after backward, before the step)."""
        if self.world == 1:
            return
        for parameter in model.parameters():
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad /= self.world

    def from_first(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (`value` is only computed there)."""
        if self.world == 1:
            return value()
        box = [value() if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_in_step(self, model: nn.Module) -> None:
        """Fails where the ranks' weights differ: their steps were not one step."""
        if self.world == 1:
            return
        total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
        sums = [0.0] * self.world
        dist.all_gather_object(sums, total.item())
        if len(set(sums)) > 1:
            raise TrainingFailed(f"the CF workers' weights diverged (parameter sums {sums})")


ONE_PROCESS = Shard()


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
    trainer: CFTrainer,
    valid: EvalSet,
    schedule: DictConfig,
    writer: SummaryWriter | None,
    shard: Shard = ONE_PROCESS,
) -> FitResult:
    """Train up to `schedule.epochs`, validating every `eval_every` epochs (and after the last).

    Stops after `patience` validations without a better NDCG@10 and restores the best weights.
    `writer` (TensorBoard) is rank 0's; the other ranks pass None.
    """
    best = FitResult(0, 0, {SELECT_METRIC: -1.0})
    best_state: dict[str, torch.Tensor] = {}
    stale = 0
    name = type(trainer.model).__name__
    epochs = range(1, schedule.epochs + 1)
    with tqdm(epochs, desc=name, unit="epoch", disable=shard.rank > 0) as bar:
        for epoch in bar:
            trainer.model.train()
            loss = trainer.train_epoch()
            bar.set_postfix(loss=f"{loss:.4f}", best_ndcg10=f"{best.valid[SELECT_METRIC]:.4f}")
            if writer:
                writer.add_scalar("train/loss", loss, epoch)
            if epoch % schedule.eval_every and epoch != schedule.epochs:
                continue
            metrics = shard.from_first(lambda: evaluate(trainer, valid))
            for key in ("recall@10", SELECT_METRIC) if writer else ():
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
    manifest: dict[str, Any], model_cfg: DictConfig, seed: int, export_format: int
) -> str:
    """The data (its manifest's fingerprint), the settings the weights depend on (a key of
    `UNUSED_UNLESS` only when the setting it serves is chosen), the seed and the export format."""
    settings = to_plain(model_cfg)
    for key, (other, value) in UNUSED_UNLESS.items():
        if key in settings and model_cfg[other] != value:
            del settings[key]
    return fingerprint(manifest["fingerprint"], settings, seed, export_format)


TrainerFactory = Callable[[PreparedData, DictConfig, np.random.Generator, Shard], CFTrainer]


@dataclass(frozen=True)
class CFJob:
    """What trains one CF model, wherever it runs: `cfg[name]` configures it."""

    name: str
    cfg: DictConfig
    data_dir: Path
    make_trainer: TrainerFactory
    key: str


# Trains a job and writes its outputs into the folder (genrec/cluster/cf_job.py: on Ray).
Runner = Callable[[CFJob, Path], None]


def train_here(job: CFJob, out: Path, shard: Shard = ONE_PROCESS) -> None:
    """Trains the job in this process, as one rank of `shard`; rank 0 writes into `out`."""
    cfg, model_cfg = job.cfg, job.cfg[job.name]
    data = load_prepared(job.data_dir)
    torch.manual_seed(cfg.seed)
    trainer = job.make_trainer(data, model_cfg, np.random.default_rng(cfg.seed), shard)
    if shard.rank:  # its own dropout draws; the weights started equal on every rank
        torch.manual_seed(cfg.seed + shard.rank)
    writer = SummaryWriter(str(out / "tb")) if shard.rank == 0 else None
    with closing(writer) if writer else nullcontext():
        result = fit(trainer, data.valid, model_cfg, writer, shard)
    shard.check_in_step(trainer.model)
    if shard.rank:
        return
    test = evaluate(trainer, data.test)
    trainer.export(out)
    checkpoint = {
        "state_dict": trainer.model.state_dict(),
        "num_users": data.num_users,
        "num_items": data.num_items,
        "config": to_plain(model_cfg),
    }
    torch.save(checkpoint, out / MODEL)
    metrics = {
        "valid": result.valid,
        "test": test,
        "popularity": popularity_metrics(data),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "workers": shard.world,
        "fingerprint": job.key,
        "data_fingerprint": data.manifest["fingerprint"],
        "config": to_plain(cfg),
        "code": code_version(),
    }
    write_json(out / CF_METRICS, metrics)


def train_cf_model(
    name: str,
    cfg: DictConfig,
    data_dir: Path,
    out_dir: Path,
    make_trainer: TrainerFactory,
    export_format: int = 1,
    runner: Runner = train_here,
) -> Path:
    """Train the model configured at `cfg[name]` (or reuse out_dir) and write its outputs.
    `export_format` is bumped when the trainer exports other files or vectors of another
    meaning, so that a folder written before is not reused (the fingerprint holds it). The
    data-parallel workers of a `runner` step as one process would, so the fingerprint does
    not hold how many there were (metrics.json does).

    out_dir gets the trainer's embeddings, model.pt (state dict + what built it), metrics.json
    (best-epoch validation, test with the best weights, popularity) and TensorBoard logs in tb/.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    key = run_fingerprint(load_manifest(data_dir), cfg[name], cfg.seed, export_format)
    if made_with(out_dir / CF_METRICS, key):
        log.info("%s: reused %s (fingerprint %s)", name, out_dir, key)
        return out_dir
    with atomic_dir(out_dir) as scratch:
        runner(CFJob(name, cfg, data_dir.absolute(), make_trainer, key), scratch)
    metrics = json.loads((out_dir / CF_METRICS).read_text())
    log.info(
        "%s: test recall@10 %.4f ndcg@10 %.4f (best epoch %d of %d) -> %s",
        name,
        metrics["test"]["recall@10"],
        metrics["test"]["ndcg@10"],
        metrics["best_epoch"],
        metrics["epochs"],
        out_dir,
    )
    return out_dir
