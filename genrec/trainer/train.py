"""The shared training loop around a DeepSpeed engine: one rank of many, any method.

Every prefix of a user's training sequence predicts its next item; the method turns each batch
into a loss (its `objective`) and ranks items for validation (its `ranker`). The loop validates
every `trainer.eval_every` optimizer steps, or once an epoch (each rank scores a slice of the
validation users), keeps the weights with the best validation NDCG@10, stops after
`trainer.patience` validations without progress (a gain of `trainer.min_gain`), and checkpoints
its named states as it goes.
Where the batches come from and where checkpoints go is the caller's business
(genrec/cluster/train_job.py runs it on Ray Train). The test split is never read here.
"""

import dataclasses
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
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from genrec.artifacts import SELECT_METRIC
from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.prepared import EvalSet, load_eval_set
from genrec.data_pipeline.subsample import train_examples
from genrec.errors import ConfigError, DataError
from genrec.provenance import code_version, file_digest, fingerprint, to_plain
from genrec.trainer.checkpoint import load_model, model_payload
from genrec.trainer.config import validation_steps
from genrec.trainer.engine import build_engine, full_state_dict, resolve_device
from genrec.trainer.evaluate import split_loss, split_metrics, table_digests
from genrec.trainer.hooks import MethodHooks, Plugin, Update
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig, batch_flops
from genrec.trainer.objective import MODEL_TERMS, Batch, targets_in
from genrec.trainer.state import Stateful, load_states, save_states

DEEPSPEED_TAG = "deepspeed"
# What a rank that has run dry feeds its engine (with weight 0) while others still train.
IDLE_ROWS = {
    "user": torch.zeros(1, dtype=torch.long),
    "history": torch.zeros(1, 1, dtype=torch.long),
    "target": torch.zeros(1, dtype=torch.long),
    "group": torch.zeros(1, dtype=torch.long),
}
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

log = logging.getLogger(__name__)


def model_config(
    cfg: DictConfig, codes: ItemCodes, fields: dict[str, int | str] | None = None
) -> ModelConfig:
    """The configured preset sized to the tokenizer's IDs and the data's history length, with
    the fields the method derives (`fields`)."""
    options = {k: v for k, v in to_plain(cfg.trainer.model).items() if v is not None}
    options |= fields or {}
    return ModelConfig.preset(
        options.pop("preset"),
        num_levels=codes.num_levels,
        codebook_size=codes.codebook_size,
        dedup_size=codes.dedup_size,
        max_history_items=cfg.data.max_history,
        **options,
    )


def initial_model(path: Path, config: ModelConfig, method: MethodHooks) -> GenerativeRecommender:
    """Saved weights to start from (fine-tuning a pre-trained model): the architecture must be
    this run's, with room for its dedup codes (pre-training on several tables may need more);
    ETEGRec's alignment adapters come along unused."""
    saved, _ = load_model(path, method.build_model)
    fits = saved.config.dedup_size >= config.dedup_size
    same = dataclasses.replace(
        config,
        dedup_size=saved.config.dedup_size,
        latent_adapter_dim=saved.config.latent_adapter_dim,
        embedding_adapter_dim=saved.config.embedding_adapter_dim,
    )
    if not fits or same != saved.config:
        raise DataError(
            str(path),
            f"holds a model of {saved.config}, but this run builds {config} "
            "(trainer.init_from must match trainer.model and the tokenizer's IDs)",
        )
    return saved


def train_fingerprint(cfg: DictConfig, data_dir: Path, tables: list[Path]) -> str:
    """Everything the trained weights depend on, the worker count included (it sets the order
    in which the shards reach the model)."""
    init = cfg.trainer.init_from
    if init and not Path(init).is_file():
        raise ConfigError(f"config key 'trainer.init_from': {init} is not a file")
    return fingerprint(
        load_manifest(data_dir)["fingerprint"],
        table_digests(tables),
        file_digest(init) if init else None,
        cfg.method,
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


@dataclass
class Progress:
    """What the loop knows about itself; a named state of every checkpoint, and train.json."""

    step: int = 0
    samples: int = 0
    tokens: int = 0  # trained targets' codes (each item of the data once a pass)
    flops: int = 0  # training FLOPs by the model's own count (model.flops_per_example)
    train_seconds: float = 0.0
    best_step: int = 0
    best: dict[str, float] = field(default_factory=lambda: {SELECT_METRIC: -1.0})
    stale: int = 0
    mark: float = -1.0  # the validation NDCG@10 that last reset patience
    groups: list[int] = field(default_factory=list)  # examples drawn in each code group
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def judge(self, metrics: dict[str, float], min_gain: float) -> bool:
        """Records a validation; True when it is the best so far. Patience resets only on a
        relative gain of `min_gain` over the validation that last reset it, so a flat curve's
        noise-sized creep does not keep a run going (the best weights are kept either way)."""
        value = metrics[SELECT_METRIC]
        if value > self.mark + abs(self.mark) * min_gain:
            self.mark, self.stale = value, 0
        else:
            self.stale += 1
        if value <= self.best[SELECT_METRIC]:
            return False
        self.best, self.best_step = metrics, self.step
        return True


def wants_validation(plugins: list[Plugin], due: bool) -> bool:
    """The cadence's `due`, unless a plugin moves the validation; every plugin is asked at
    every step, since one may keep a validation it moved."""
    votes = [vote for plugin in plugins if (vote := plugin.validate_now(due)) is not None]
    return all(votes) if votes else due


class BestModel:
    """The best-validation weights, saved as the consolidated `model.pt` a user evaluates."""

    def __init__(
        self,
        model: GenerativeRecommender,
        progress: Progress,
        provenance: dict,
        ids: Callable[[], dict[str, Any]] = dict,
    ):
        """`ids()`: the IDs the weights were selected with, where training changes them."""
        self.model, self.progress, self.provenance, self.ids = model, progress, provenance, ids

    def state_dict(self) -> dict[str, Any]:
        p = self.progress
        extra = self.provenance | self.ids()
        return model_payload(self.model, step=p.best_step, valid=p.best, **extra)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["state_dict"])


class Meter:
    """Samples, tokens, seconds and loss terms since the last report; the terms stay on the
    device until read, so training never waits for them."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.samples, self.tokens, self.history_items = 0, 0, 0
        self.terms: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.started = time.perf_counter()

    def add(
        self, history: Tensor, targets: int, terms: dict[str, Tensor], codes_per_item: int
    ) -> None:
        """`history`: the batch's item ids on the host, [B, H]; `targets`: the examples."""
        items = int((history >= 0).sum())
        self.samples += targets
        self.history_items += items
        self.tokens += (items + targets) * codes_per_item
        for name, value in terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + value.detach().float()
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        """Each term's mean over the micro-steps that had it."""
        return {name: float(total) / self.counts[name] for name, total in self.terms.items()}

    def rates(self) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return {
            "samples_per_s": self.samples / seconds,
            "tokens_per_s": self.tokens / seconds,
            "mean_history": self.history_items / max(self.samples, 1),
        }


def validation_sample(cfg: DictConfig, data_dir: Path) -> EvalSet:
    """The users validation scores (`evaluate.valid_users` of them, seeded; 0: all)."""
    return load_eval_set(data_dir, "valid").subsample(cfg.evaluate.valid_users, cfg.seed)


class Loop:
    """One rank's training: engine, the method's objective and ranker, validation slice, the
    best weights and the named states a checkpoint saves."""

    def __init__(
        self,
        cfg: DictConfig,
        data_dir: Path,
        tables: list[Path],
        key: str,
        method: MethodHooks,
        valid: EvalSet | None = None,
    ):
        """`valid` is the validation sample (`validation_sample`) when the caller shares one
        among the ranks; else this rank reads it."""
        self.cfg, self.trainer = cfg, cfg.trainer
        manifest = load_manifest(data_dir)
        self.provenance = {
            "fingerprint": key,
            "method": method.name,
            "semantic_ids": table_digests(tables),
            "config": to_plain(cfg),
            "code": code_version(),
        }
        self.device = resolve_device(cfg.trainer.device)
        self.method = method
        codes = ItemCodes.load(tables, manifest["num_items"], cfg.tokenizer.codebook_size)
        self.codes = codes.to(self.device)
        torch.manual_seed(cfg.seed)
        config = model_config(cfg, self.codes, method.model_fields(cfg))
        self.plugins: list[Plugin] = method.plugins(cfg, tables, manifest["num_items"], self.device)
        for plugin in self.plugins:
            config = plugin.model_config(config, codes.codebook_size)
        start = None
        if self.trainer.init_from:
            start = initial_model(Path(self.trainer.init_from), config, method)
            config = start.config
        self.model = method.build_model(config)
        if start is not None:
            self.model.load_state_dict(start.state_dict())
        self.eval_model = method.build_model(config).to(self.device)
        self.tables = tables
        self.objective = method.objective(cfg, self.codes, tables)
        self.ranker = method.ranker(cfg, self.codes, tables)
        self.data_dir = data_dir
        self.examples_per_epoch = train_examples(data_dir, self.trainer.data_fraction, cfg.seed)
        self.total_steps = self.steps_of(self.trainer.epochs)
        self.eval_every = validation_steps(self.trainer, self.examples_per_epoch)
        model_epochs = self.trainer.epochs
        for plugin in self.plugins:
            model_epochs = plugin.model_epochs(model_epochs)
        self.engine = build_engine(
            self.model, self.trainer, self.steps_of(model_epochs), self.device
        )
        self.engines = {DEEPSPEED_TAG: self.engine}
        self.rank, self.world_size = self.engine.global_rank, self.engine.world_size
        valid = valid if valid is not None else validation_sample(cfg, data_dir)
        self.valid = valid.take(np.arange(self.rank, valid.users.size, self.world_size))
        self.peak = peak_flops(self.device)
        self.progress = Progress(groups=[0] * self.codes.num_groups)
        self.steps_seen = 0
        best = BestModel(method.build_model(config), self.progress, self.provenance, self.ids)
        self.best_model = best.model
        self.states: dict[str, Stateful] = {"progress": self.progress, "model": best}
        for plugin in self.plugins:
            plugin.attach(self)
            self.engines |= plugin.engines()
            self.states[plugin.name] = plugin

    def ids(self) -> dict[str, Any]:
        """What the plugins add to the selected model's file."""
        return {k: v for plugin in self.plugins for k, v in plugin.best_payload().items()}

    def group_weights(self) -> np.ndarray | None:
        """The weights the stream draws code groups with now: a plugin's (MTGRec's
        curriculum), else uniform over the groups; None with one group."""
        weights = (plugin.group_weights() for plugin in self.plugins)
        chosen = next((w for w in weights if w is not None), None)
        groups = self.codes.num_groups
        if chosen is None and groups > 1:
            chosen = np.full(groups, 1 / groups)
        return chosen

    def summary(self) -> dict[str, Any]:
        """What the plugins add to train.json."""
        return {k: v for plugin in self.plugins for k, v in plugin.summary().items()}

    def steps_of(self, epochs: int) -> int:
        return max(1, math.ceil(self.examples_per_epoch * epochs / self.trainer.batch_size))

    def engine_steps(self) -> int:
        """Optimizer steps of all engines (ETEGRec's tokenizer has its own)."""
        return sum(engine.global_steps for engine in self.engines.values())

    def stepped(self) -> bool:
        """Whether the last micro-step ended an optimizer step (of any engine)."""
        return self.engine_steps() != self.steps_seen

    def micro_step(self, rows: dict[str, Any], weight: float = 1.0) -> dict[str, Tensor]:
        """One forward and backward (and optimizer step at the end of an accumulation) of each
        engine the method updates now (ETEGRec: the tokenizer's, the model's or both). The
        loss is scaled by `weight`, this rank's share of the micro-step's examples times the
        world size, so the gradient averaged over ranks is the mean over all their examples
        however unevenly they fell."""
        batch = Batch.coded(rows, self.codes, self.device)
        updates = self.plugin_updates(batch)
        if updates is None:
            updates = [(self.engine, *self.objective(self.engine, batch))]
        total, named = 0.0, {}
        for engine, loss, terms in updates:
            engine.backward(loss * weight)
            engine.step()
            total, named = total + loss.detach(), named | terms
        return {"loss": total, **named}

    def plugin_updates(self, batch: Batch) -> list[Update] | None:
        """The first plugin's own updates of the micro-step (None: the loop's objective)."""
        for plugin in self.plugins:
            updates = plugin.updates(batch)
            if updates is not None:
                return updates
        return None

    def work_everywhere(self, rows: dict | None) -> tuple[int, int, int]:
        """The examples, tokens and FLOPs of this micro-step over all ranks; no examples once
        every rank has run dry. Ranks get different numbers of examples: one that runs dry
        first steps on with weight 0 until the others have trained every example they got.
        Tokens are the trained targets' codes, each item of the data once a pass whatever the
        encoder reads around it (so data sizes compare across encoders); the examples drawn
        in each code group are added to the progress."""
        groups = self.codes.num_groups
        work = [0] * (3 + groups)
        if rows is not None:
            config, targets = self.model.config, targets_in(rows)
            tokens = targets * config.codes_per_item
            work[:3] = [targets, tokens, batch_flops(config, rows["history"], rows["target"])]
            per_row = (rows["target"] >= 0).reshape(len(rows["target"]), -1).sum(1)
            work[3:] = np.bincount(
                rows["group"].numpy(), weights=per_row.numpy(), minlength=groups
            ).tolist()
        total = torch.tensor(work, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        examples, tokens, flops, *drawn = (int(value) for value in total.tolist())
        p = self.progress
        p.groups = [a + b for a, b in zip(p.groups, drawn, strict=True)]
        return examples, tokens, flops

    def mean_over_ranks(self, metrics: dict[str, float], count: int) -> dict[str, float]:
        keys = sorted(metrics)
        sums = [metrics[k] * count for k in keys] + [count]
        sums = torch.tensor(sums, dtype=torch.float64, device=self.device)
        dist.all_reduce(sums)
        return {k: float(v) for k, v in zip(keys, (sums[:-1] / sums[-1]).tolist(), strict=True)}

    def validate(self, writer: SummaryWriter | None) -> dict[str, float]:
        """Validation metrics over all ranks' users, the same on every rank."""
        p, evaluate = self.progress, self.cfg.evaluate
        started = time.perf_counter()
        self.eval_model.load_state_dict(full_state_dict(self.engine))
        local = split_metrics(
            self.eval_model,
            self.ranker,
            self.codes,
            self.valid,
            evaluate.beam_size,
            evaluate.batch_size,
        )
        local["loss"] = split_loss(
            self.eval_model, self.objective, self.codes, self.valid, evaluate.batch_size
        )
        metrics = self.mean_over_ranks(local, int(self.valid.users.size))
        if writer is not None:
            for key, value in metrics.items():
                writer.add_scalar(f"valid/{key}", value, p.step)
        seen = {"samples": p.samples, "tokens": p.tokens, "flops": p.flops}
        cost = {
            "train_seconds": round(p.train_seconds, 1),
            "valid_seconds": round(time.perf_counter() - started, 1),
        }
        p.history.append({"step": p.step, "epoch": self.epoch(), **seen, **cost, **metrics})
        if p.judge(metrics, self.trainer.min_gain):
            self.best_model.load_state_dict(self.eval_model.state_dict())
            for plugin in self.plugins:
                plugin.new_best()
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

    def save(self, folder: Path) -> None:
        """This rank's DeepSpeed state of each engine; rank 0 adds the named states (the same
        on every rank)."""
        for tag, engine in self.engines.items():
            engine.save_checkpoint(str(folder), tag=tag)
        if self.rank == 0:
            save_states(folder, self.states)

    def restore(self, folder: Path) -> None:
        """Loads a checkpoint written by `save`: the engines and every named state."""
        for tag, engine in self.engines.items():
            engine.load_checkpoint(str(folder), tag=tag)
        load_states(folder, self.states)

    def log_terms(self, writer: SummaryWriter | None, meter: Meter) -> dict[str, float]:
        """Loss terms and samples/s of every rank and in total (a collective: all ranks call
        it); the mean loss since the last call joins the progress for the run report."""
        step, rates, terms = self.progress.step, meter.rates(), meter.means()
        per_rank = [None] * self.world_size
        dist.all_gather_object(per_rank, rates["samples_per_s"])
        meter.reset()
        own = [terms[name] for name in MODEL_TERMS if name in terms]
        if own:
            self.progress.losses.append([step, own[0]])
        if writer is None:
            return terms
        for name, value in terms.items():
            writer.add_scalar(f"train/{name}", value, step)
        writer.add_scalar("train/lr", self.engine.get_lr()[0], step)
        writer.add_scalar("perf/samples_per_s", sum(per_rank), step)
        for rank, value in enumerate(per_rank):
            writer.add_scalar(f"perf/samples_per_s_rank{rank}", value, step)
        writer.add_scalar("perf/tokens_per_s", rates["tokens_per_s"] * self.world_size, step)
        if self.peak is not None:
            flops = self.model.flops_per_example(max(1, round(rates["mean_history"])))
            mfu = sum(per_rank) * flops / (self.peak * self.world_size)
            writer.add_scalar("perf/mfu", mfu, step)
        return terms

    def show(self, bar: tqdm, loss: float) -> None:
        """The latest logged loss and the best validation so far, at the bar's next refresh."""
        shown = {} if math.isnan(loss) else {"loss": f"{loss:.3f}"}
        if self.progress.best_step:
            shown["best"] = f"{self.progress.best[SELECT_METRIC]:.4f}"
        bar.set_postfix(shown, refresh=False)

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
            mininterval=10,
            disable=self.rank != 0,
        )
        stop, loss = False, float("nan")
        self.steps_seen = self.engine_steps()
        while not stop:
            examples, tokens, flops = self.work_everywhere(rows := next(batches, None))
            if not examples:
                break
            started = time.perf_counter()
            if rows is None:
                self.micro_step(IDLE_ROWS, weight=0.0)
            else:
                terms = self.micro_step(rows, self.world_size * targets_in(rows) / examples)
                trained(rows)
                meter.add(
                    rows["history"], targets_in(rows), terms, self.model.config.codes_per_item
                )
            p.train_seconds += time.perf_counter() - started
            p.samples, p.tokens, p.flops = p.samples + examples, p.tokens + tokens, p.flops + flops
            if not self.stepped():
                continue
            p.step, self.steps_seen = p.step + 1, self.engine_steps()
            bar.update(1)
            for plugin in self.plugins:
                stop = plugin.step_end(writer) or stop
            if p.step % self.trainer.log_every == 0:
                loss = self.log_terms(writer, meter)["loss"]
            metrics = {"step": p.step, "train_loss": loss, "epoch": self.epoch()}
            due = p.step % self.eval_every == 0
            if wants_validation(self.plugins, due):
                metrics |= self.validate(writer)
                stop = stop or p.stale >= self.trainer.patience
            if p.step % every == 0 if every else due:
                checkpoint(metrics)
            self.show(bar, loss)
        if not p.history or p.history[-1]["step"] != p.step:
            self.validate(writer)
            self.show(bar, loss)
        bar.close()
        return p
