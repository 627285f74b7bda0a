"""`genrec train`: the generative recommender's training loop around a DeepSpeed engine.

Every prefix of a user's training sequence predicts its next item. The loop validates every
`trainer.eval_every` optimizer steps with constrained beam search, keeps the weights with the
best validation NDCG@10, stops after `trainer.patience` validations without progress, and saves
DeepSpeed checkpoints as it goes. Outputs in the stage folder: `model.pt` (the selected
weights) and `train.json` (validation history, throughput, config, code version), both written
atomically, and per-fingerprint working files under `work/<fingerprint>/` (TensorBoard logs,
DeepSpeed checkpoints). The test split is never read here.
"""

import json
import logging
import math
import shutil
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.streaming import TrainBatches, TrainExamples
from genrec.errors import ConfigError
from genrec.provenance import code_version, file_digest, fingerprint, to_plain, write_json
from genrec.tokenizers.cf_training import load_eval_set
from genrec.tokenizers.tokenize import REPORT, SEMANTIC_IDS
from genrec.trainer.checkpoint import save_model
from genrec.trainer.engine import build_engine, resolve_device
from genrec.trainer.evaluate import split_metrics, subsample
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig, code_cross_entropy
from genrec.trainer.trie import ItemTrie

MODEL_FILE = "model.pt"
BEST_FILE = "best.pt"
SUMMARY_FILE = "train.json"
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
    tokenizer = json.loads((tokenizer_dir / REPORT).read_text())["fingerprint"]
    return fingerprint(
        load_manifest(data_dir)["fingerprint"],
        tokenizer,
        to_plain(cfg.trainer),
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
    epoch: int = 0
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
    """One training run: engine, data, validation and bookkeeping."""

    def __init__(self, cfg: DictConfig, data_dir: Path, tokenizer_dir: Path, work: Path, key: str):
        self.cfg, self.trainer, self.work = cfg, cfg.trainer, work
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
        self.model = GenerativeRecommender(model_config(cfg, self.codes))
        manifest = load_manifest(data_dir)
        self.steps_per_epoch = math.ceil(manifest["num_train_examples"] / self.trainer.batch_size)
        total = self.steps_per_epoch * self.trainer.epochs
        self.engine = build_engine(self.model, self.trainer, total, self.device)
        examples = TrainExamples(
            data_dir,
            cfg.data.max_history,
            rank=self.engine.global_rank,
            world_size=self.engine.world_size,
            seed=cfg.seed,
            shuffle_buffer=self.trainer.shuffle_buffer,
        )
        self.batches = TrainBatches(examples, self.trainer.micro_batch_size)
        valid = load_eval_set(data_dir, "valid")
        self.valid = subsample(valid, cfg.evaluate.valid_users, cfg.seed)
        self.peak = peak_flops(self.device)
        self.progress = Progress()

    def loader(self) -> DataLoader:
        self.batches.set_epoch(self.progress.epoch)
        return DataLoader(
            self.batches,
            batch_size=None,
            num_workers=self.trainer.loader_workers,
            pin_memory=self.device.type == "cuda",
        )

    def micro_step(self, batch: dict[str, torch.Tensor]) -> float:
        history = self.codes(batch["history"].to(self.device, non_blocking=True))
        target = self.codes(batch["target"].to(self.device, non_blocking=True))
        user = batch["user"].to(self.device) if self.model.config.num_user_buckets else None
        logits = self.engine(history, target, user)
        loss = code_cross_entropy(logits, target, self.trainer.temperature)
        self.engine.backward(loss)
        self.engine.step()
        return loss.item()

    def validate(self, writer: SummaryWriter) -> bool:
        """Scores the validation users; True when patience has run out."""
        p = self.progress
        metrics = split_metrics(
            self.engine.module,
            self.codes,
            self.trie,
            self.valid,
            self.cfg.evaluate.beam_size,
            self.cfg.evaluate.batch_size,
            progress=False,
        )
        for key, value in metrics.items():
            writer.add_scalar(f"valid/{key}", value, p.step)
        p.history.append({"step": p.step, "epoch": p.epoch, **metrics})
        if metrics[SELECT_METRIC] > p.best[SELECT_METRIC]:
            p.best, p.best_step, p.stale = metrics, p.step, 0
            save_model(
                self.engine.module,
                self.work / BEST_FILE,
                step=p.step,
                valid=metrics,
                **self.provenance,
            )
        else:
            p.stale += 1
        log.info(
            "step %d: valid recall@10 %.4f ndcg@10 %.4f (best %.4f at step %d)",
            p.step,
            metrics["recall@10"],
            metrics[SELECT_METRIC],
            p.best[SELECT_METRIC],
            p.best_step,
        )
        if self.trainer.checkpoint_every == 0:
            self.checkpoint()
        return p.stale >= self.trainer.patience

    def checkpoint(self) -> None:
        """A DeepSpeed checkpoint (all ranks), keeping the newest `keep_checkpoints`."""
        folder = self.work / "checkpoints"
        state = {k: v for k, v in vars(self.progress).items() if k != "history"}
        self.engine.save_checkpoint(
            str(folder), tag=f"step-{self.progress.step:08d}", client_state=state
        )
        if self.engine.global_rank == 0:
            for old in sorted(folder.glob("step-*"))[: -self.trainer.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

    def log_rates(self, writer: SummaryWriter, meter: Meter, loss: float) -> None:
        step, rates = self.progress.step, meter.rates()
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/lr", self.engine.get_lr()[0], step)
        writer.add_scalar("perf/samples_per_s", rates["samples_per_s"], step)
        writer.add_scalar("perf/tokens_per_s", rates["tokens_per_s"], step)
        if self.peak is not None:
            flops = self.model.flops_per_example(max(1, round(rates["mean_history"])))
            writer.add_scalar("perf/mfu", rates["samples_per_s"] * flops / self.peak, step)
        meter.reset()

    def run(self, writer: SummaryWriter) -> Progress:
        p, meter = self.progress, Meter()
        total = self.steps_per_epoch * self.trainer.epochs
        self.engine.module.train()
        with tqdm(total=total, desc="train", unit="step") as bar:
            while p.epoch < self.trainer.epochs:
                for batch in self.loader():
                    started = time.perf_counter()
                    loss = self.micro_step(batch)
                    p.train_seconds += time.perf_counter() - started
                    meter.add(batch["history"], self.model.config.codes_per_item)
                    p.samples += batch["history"].size(0)
                    if self.engine.global_steps == p.step:
                        continue
                    p.step = self.engine.global_steps
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", best=f"{p.best[SELECT_METRIC]:.4f}")
                    if p.step % self.trainer.log_every == 0:
                        self.log_rates(writer, meter, loss)
                    every = self.trainer.checkpoint_every
                    if every and p.step % every == 0:
                        self.checkpoint()
                    if p.step % self.trainer.eval_every == 0 and self.validate(writer):
                        return p
                p.epoch += 1
                if p.step % self.trainer.eval_every and self.validate(writer):
                    return p
        return p


def train(cfg: DictConfig, data_dir: Path, tokenizer_dir: Path, out_dir: Path) -> Path:
    """Train (or reuse out_dir when data, IDs and config are unchanged) and return out_dir."""
    check_trainer(cfg.trainer)
    key = train_fingerprint(cfg, data_dir, tokenizer_dir)
    try:
        if json.loads((out_dir / SUMMARY_FILE).read_text())["fingerprint"] == key:
            log.info("train: reusing %s (fingerprint %s)", out_dir, key)
            return out_dir
    except (OSError, ValueError, KeyError):
        pass
    work = out_dir / "work" / key
    loop = Loop(cfg, data_dir, tokenizer_dir, work, key)
    started = time.perf_counter()
    with closing(SummaryWriter(str(work / "tb"))) as writer:
        progress = loop.run(writer)
    seconds = time.perf_counter() - started
    partial = out_dir / f".{MODEL_FILE}.tmp"
    shutil.copyfile(work / BEST_FILE, partial)
    partial.replace(out_dir / MODEL_FILE)
    write_json(
        out_dir / SUMMARY_FILE,
        {
            "best_step": progress.best_step,
            "valid": progress.best,
            "steps": progress.step,
            "epochs": progress.epoch,
            "samples": progress.samples,
            "seconds": round(seconds, 1),
            "train_samples_per_s": round(progress.samples / progress.train_seconds, 1),
            "parameters": loop.model.num_parameters(),
            "model": vars(loop.model.config),
            "validations": progress.history,
            "tensorboard": str(work / "tb"),
            **loop.provenance,
        },
    )
    log.info(
        "train: best valid ndcg@10 %.4f at step %d -> %s",
        progress.best[SELECT_METRIC],
        progress.best_step,
        out_dir,
    )
    return out_dir
