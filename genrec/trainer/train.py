"""The generative recommender's training loop around a DeepSpeed engine: one rank of many.

Every prefix of a user's training sequence predicts its next item. The loop validates every
`trainer.eval_every` optimizer steps with constrained beam search (each rank scores a slice of
the validation users), keeps the weights with the best validation NDCG@10, stops after
`trainer.patience` validations without progress, and checkpoints as it goes. Where the batches
come from and where checkpoints go is the caller's business (genrec/cluster/train_job.py runs
it on Ray Train). The test split is never read here.
"""

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from genrec.data_pipeline.prepare import load_manifest
from genrec.errors import ConfigError
from genrec.provenance import code_version, file_digest, fingerprint, to_plain, write_json
from genrec.tokenizers.cf_training import load_eval_set
from genrec.tokenizers.tokenize import REPORT, SEMANTIC_IDS
from genrec.trainer.checkpoint import load_model, save_model
from genrec.trainer.engine import build_engine, full_state_dict, resolve_device
from genrec.trainer.evaluate import split_loss, split_metrics, subsample, take_rows
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig, code_cross_entropy
from genrec.trainer.trie import ItemTrie

MODEL_FILE = "model.pt"
SUMMARY_FILE = "train.json"
STATE_FILE = "state.json"
DEEPSPEED_TAG = "deepspeed"
SELECT_METRIC = "ndcg@10"
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

log = logging.getLogger(__name__)


def item_codes(cfg: DictConfig, data_dir: Path, tokenizer_dir: Path) -> ItemCodes:
    num_items = load_manifest(data_dir)["num_items"]
    path = tokenizer_dir / "items" / SEMANTIC_IDS
    return ItemCodes.load(path, num_items, cfg.tokenizer.codebook_size)


def model_config(cfg: DictConfig, codes: ItemCodes) -> ModelConfig:
    """The configured preset sized to the tokenizer's IDs and the data's history length."""
    options = {k: v for k, v in to_plain(cfg.trainer.model).items() if v is not None}
    return ModelConfig.preset(
        options.pop("preset"),
        num_levels=codes.num_levels,
        codebook_size=codes.codebook_size,
        dedup_size=codes.dedup_size,
        max_history_items=cfg.data.max_history,
        **options,
    )


def train_fingerprint(cfg: DictConfig, data_dir: Path, tokenizer_dir: Path) -> str:
    """Everything the trained weights depend on, the worker count included (it sets the order
    in which the shards reach the model)."""
    tokenizer = json.loads((tokenizer_dir / REPORT).read_text())["fingerprint"]
    return fingerprint(
        load_manifest(data_dir)["fingerprint"],
        tokenizer,
        to_plain(cfg.trainer),
        cfg.cluster.num_workers,
        cfg.data.max_history,
        cfg.evaluate.beam_size,
        cfg.evaluate.valid_users,
        cfg.seed,
    )


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of known GPUs, for the MFU estimate; None elsewhere."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def check_trainer(trainer: DictConfig) -> None:
    for key in ("epochs", "batch_size", "micro_batch_size", "eval_every", "patience"):
        if trainer[key] < 1:
            raise ConfigError(f"config key 'trainer.{key}' must be >= 1, got {trainer[key]}")
    if trainer.temperature <= 0:
        raise ConfigError(
            f"config key 'trainer.temperature' must be > 0, got {trainer.temperature}"
        )
    if trainer.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"config key 'trainer.zero_stage' must be 0-3, got {trainer.zero_stage}")


@dataclass
class Progress:
    """What the loop knows about itself; saved into checkpoints and train.json."""

    step: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    best_step: int = 0
    best: dict[str, float] = field(default_factory=lambda: {SELECT_METRIC: -1.0})
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class Meter:
    """Samples, tokens and seconds since the last report."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.samples, self.tokens, self.history_items = 0, 0, 0
        self.started = time.perf_counter()

    def add(self, history: torch.Tensor, codes_per_item: int) -> None:
        items = int((history >= 0).sum())
        self.samples += history.size(0)
        self.history_items += items
        self.tokens += (items + history.size(0)) * codes_per_item

    def rates(self) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return {
            "samples_per_s": self.samples / seconds,
            "tokens_per_s": self.tokens / seconds,
            "mean_history": self.history_items / max(self.samples, 1),
        }


class Loop:
    """One rank's training: engine, validation slice, best weights and bookkeeping."""

    def __init__(self, cfg: DictConfig, data_dir: Path, tokenizer_dir: Path, key: str):
        self.cfg, self.trainer = cfg, cfg.trainer
        self.provenance = {
            "fingerprint": key,
            "semantic_ids": file_digest(tokenizer_dir / "items" / SEMANTIC_IDS),
            "config": to_plain(cfg),
            "code": code_version(),
        }
        self.device = resolve_device(cfg.trainer.device)
        self.codes = item_codes(cfg, data_dir, tokenizer_dir).to(self.device)
        self.trie = ItemTrie.from_codes(self.codes.table.cpu()).to(self.device)
        torch.manual_seed(cfg.seed)
        config = model_config(cfg, self.codes)
        self.model = GenerativeRecommender(config)
        self.eval_model = GenerativeRecommender(config).to(self.device)
        self.best_model = GenerativeRecommender(config)
        self.examples_per_epoch = load_manifest(data_dir)["num_train_examples"]
        epochs = self.examples_per_epoch * self.trainer.epochs
        self.total_steps = math.ceil(epochs / self.trainer.batch_size)
        self.engine = build_engine(self.model, self.trainer, self.total_steps, self.device)
        self.rank, self.world_size = self.engine.global_rank, self.engine.world_size
        valid = subsample(load_eval_set(data_dir, "valid"), cfg.evaluate.valid_users, cfg.seed)
        if valid.users.size < self.world_size:
            raise ConfigError(
                f"{valid.users.size} validation users cannot be shared by "
                f"{self.world_size} workers (evaluate.valid_users, cluster.num_workers)"
            )
        self.valid = take_rows(valid, np.arange(self.rank, valid.users.size, self.world_size))
        self.peak = peak_flops(self.device)
        self.progress = Progress()

    def micro_step(self, batch: dict[str, torch.Tensor]) -> float:
        history = self.codes(batch["history"].to(self.device, non_blocking=True))
        target = self.codes(batch["target"].to(self.device, non_blocking=True))
        user = batch["user"].to(self.device) if self.model.config.num_user_buckets else None
        logits = self.engine(history, target, user)
        loss = code_cross_entropy(logits, target, self.trainer.temperature)
        self.engine.backward(loss)
        self.engine.step()
        return loss.item()

    def everyone_has(self, batch: dict | None) -> int:
        """The examples in this micro-step over all ranks, or 0 once any rank has run dry:
        ranks get different numbers of examples, and one rank alone would hang."""
        size = 0 if batch is None else batch["history"].size(0)
        counts = torch.tensor([batch is not None, size], dtype=torch.int64, device=self.device)
        dist.all_reduce(counts)
        return int(counts[1]) if int(counts[0]) == self.world_size else 0

    def mean_over_ranks(self, metrics: dict[str, float], count: int) -> dict[str, float]:
        keys = sorted(metrics)
        sums = [metrics[k] * count for k in keys] + [count]
        sums = torch.tensor(sums, dtype=torch.float64, device=self.device)
        dist.all_reduce(sums)
        return {k: float(v) for k, v in zip(keys, (sums[:-1] / sums[-1]).tolist(), strict=True)}

    def validate(self, writer: SummaryWriter | None) -> dict[str, float]:
        """Validation metrics over all ranks' users, the same on every rank."""
        p = self.progress
        self.eval_model.load_state_dict(full_state_dict(self.engine))
        batch = self.cfg.evaluate.batch_size
        local = split_metrics(
            self.eval_model,
            self.codes,
            self.trie,
            self.valid,
            self.cfg.evaluate.beam_size,
            batch,
            progress=False,
        )
        local["loss"] = split_loss(self.eval_model, self.codes, self.valid, batch)
        metrics = self.mean_over_ranks(local, int(self.valid.users.size))
        if writer is not None:
            for key, value in metrics.items():
                writer.add_scalar(f"valid/{key}", value, p.step)
        p.history.append({"step": p.step, "epoch": self.epoch(), **metrics})
        if metrics[SELECT_METRIC] > p.best[SELECT_METRIC]:
            p.best, p.best_step, p.stale = metrics, p.step, 0
            self.best_model.load_state_dict(self.eval_model.state_dict())
        else:
            p.stale += 1
        if self.rank == 0:
            log.info(
                "step %d: valid recall@10 %.4f ndcg@10 %.4f (best %.4f at step %d)",
                p.step,
                metrics["recall@10"],
                metrics[SELECT_METRIC],
                p.best[SELECT_METRIC],
                p.best_step,
            )
        return metrics

    def epoch(self) -> float:
        return round(self.progress.samples / self.examples_per_epoch, 3)

    def save(self, folder: Path, position: dict[str, Any]) -> None:
        """This rank's DeepSpeed state; rank 0 adds the loop's state and the best weights."""
        self.engine.save_checkpoint(str(folder), tag=DEEPSPEED_TAG)
        if self.rank == 0:
            state = {"progress": asdict(self.progress), "position": position}
            write_json(folder / STATE_FILE, {**state, **self.provenance})
            if self.progress.best_step:
                self.save_best(folder / MODEL_FILE)

    def save_best(self, path: Path) -> None:
        p = self.progress
        save_model(self.best_model, path, step=p.best_step, valid=p.best, **self.provenance)

    def restore(self, folder: Path) -> dict[str, Any]:
        """Loads a checkpoint written by `save` and returns the data position stored in it."""
        self.engine.load_checkpoint(str(folder), tag=DEEPSPEED_TAG)
        state = json.loads((folder / STATE_FILE).read_text())
        self.progress = Progress(**state["progress"])
        if (folder / MODEL_FILE).exists():
            self.best_model.load_state_dict(load_model(folder / MODEL_FILE)[0].state_dict())
        return state["position"]

    def log_rates(self, writer: SummaryWriter | None, meter: Meter, loss: float) -> None:
        """Samples/s of every rank and in total (a collective: all ranks call it)."""
        step, rates = self.progress.step, meter.rates()
        per_rank = [None] * self.world_size
        dist.all_gather_object(per_rank, rates["samples_per_s"])
        meter.reset()
        if writer is None:
            return
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/lr", self.engine.get_lr()[0], step)
        writer.add_scalar("perf/samples_per_s", sum(per_rank), step)
        for rank, value in enumerate(per_rank):
            writer.add_scalar(f"perf/samples_per_s_rank{rank}", value, step)
        writer.add_scalar("perf/tokens_per_s", rates["tokens_per_s"] * self.world_size, step)
        if self.peak is not None:
            flops = self.model.flops_per_example(max(1, round(rates["mean_history"])))
            mfu = sum(per_rank) * flops / (self.peak * self.world_size)
            writer.add_scalar("perf/mfu", mfu, step)

    def run(
        self,
        batches: Iterator[dict[str, Any]],
        trained: Callable[[dict[str, Any]], None],
        checkpoint: Callable[[dict[str, float]], None],
        writer: SummaryWriter | None,
    ) -> Progress:
        """Trains until the stream ends or patience runs out; `trained(batch)` after each
        micro-step, `checkpoint(metrics)` every `checkpoint_every` steps (0: each validation)."""
        p, meter, every = self.progress, Meter(), self.trainer.checkpoint_every
        self.engine.module.train()
        bar = tqdm(
            total=self.total_steps,
            initial=p.step,
            desc="train",
            unit="step",
            mininterval=5,
            disable=self.rank != 0,
        )
        stop, loss = False, float("nan")
        while not stop and (examples := self.everyone_has(batch := next(batches, None))):
            started = time.perf_counter()
            loss = self.micro_step(batch)
            trained(batch)
            p.train_seconds += time.perf_counter() - started
            meter.add(batch["history"], self.model.config.codes_per_item)
            p.samples += examples
            if self.engine.global_steps == p.step:
                continue
            p.step = self.engine.global_steps
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", best=f"{p.best[SELECT_METRIC]:.4f}")
            if p.step % self.trainer.log_every == 0:
                self.log_rates(writer, meter, loss)
            metrics = {"step": p.step, "train_loss": loss, "epoch": self.epoch()}
            validated = p.step % self.trainer.eval_every == 0
            if validated:
                metrics |= self.validate(writer)
                stop = p.stale >= self.trainer.patience
            if p.step % every == 0 if every else validated:
                checkpoint(metrics)
        if not p.history or p.history[-1]["step"] != p.step:
            self.validate(writer)
        bar.close()
        return p
