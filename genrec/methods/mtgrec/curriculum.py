"""MTGRec's curriculum over code groups: after each stage, each group's influence on the
validation loss re-weights how often training examples are read in it.

A stage ends after its epochs (`trainer.curriculum.stage_epochs`: a warm-up, then equal
stages in the paper); the weights then hold until the next one ends, and after the last until
the run ends. An estimate reads a subsample of training examples in every group and of
validation examples mixed over the groups, each rank its share, drawn afresh for each stage
(seeded by it), so its cost is G x train_examples + valid_examples forward-backward passes
however long the epoch, in batches cut by history length (a random batch of prefix examples is
mostly padding). Both samples are taken in `chunks` chunks whose gradients are kept apart: the
score is the mean over every pair of a training and a validation chunk, and resampling the
chunks (a bootstrap) gives its noise, recorded beside it; differences inside the noise leave
the weights near uniform (`noise_z`). The curriculum is a named state of every checkpoint:
weights, stage, scores, noise and learning rates.
Which group an example is read in is a pure function of the seed, the example and the weights
(genrec/data_pipeline/ray_ingest.py), so a resumed run draws exactly as the lost one would.
"""

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.prepared import load_eval_set
from genrec.data_pipeline.streaming import (
    TrainExamples,
    collate,
    length_batches,
    prefix_examples,
)
from genrec.methods.mtgrec.influence import (
    Projection,
    adam_direction,
    bootstrap_noise,
    chunk_scores,
    group_weights,
    mean_gradient,
)
from genrec.trainer.hooks import Plugin
from genrec.trainer.objective import Batch

if TYPE_CHECKING:
    from genrec.trainer.train import Loop

log = logging.getLogger(__name__)


def influence_samples(
    data_dir: Path, max_history: int, count: int, seed: int, stages: int
) -> list[list[dict]]:
    """For each stage, `count` training examples drawn uniformly, seeded by the seed and the
    stage; one pass over the shards builds only the drawn examples (a sequence's t-th prefix
    is its example t - 1)."""
    total = load_manifest(data_dir)["num_train_examples"]
    draws = [
        np.random.default_rng([seed, 7, stage]).choice(total, min(count, total), False)
        for stage in range(stages)
    ]
    wanted = sorted((int(index), stage) for stage, drawn in enumerate(draws) for index in drawn)
    samples: list[list[dict]] = [[] for _ in range(stages)]
    stream = TrainExamples(data_dir, max_history, seed=seed, shuffle_buffer=0)
    start, next_pick = 0, 0
    for user, seq in stream.sequences():
        stop = start + max(seq.size - 1, 0)
        while next_pick < len(wanted) and wanted[next_pick][0] < stop:
            index, stage = wanted[next_pick]
            t = index - start + 1
            samples[stage].append(next(prefix_examples(user, seq[: t + 1], max_history, first=t)))
            next_pick += 1
        if next_pick == len(wanted):
            break
        start = stop
    return samples


def moments(engine) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimizer's Adam moments of every trained weight, flat, unpartitioned (ZeRO 1-3
    assemble them with DeepSpeed's `safe_get_full_optimizer_state`, a collective)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    relink = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if relink is not None:
        # ZeRO 1-2 link the weights to their optimizer state once, right after the first
        # param group's first step, when the other groups have no state yet: link again.
        engine.optimizer._hp_optimizer_states_linked = False
        relink()
    avg, avg_sq = [], []
    for p in (p for p in engine.module.parameters() if p.requires_grad):
        state = optimizer.state.get(p, {})
        for key, out in (("exp_avg", avg), ("exp_avg_sq", avg_sq)):
            value = safe_get_full_optimizer_state(p, key)
            if value is None:
                value = state.get(key, torch.zeros_like(p))
            out.append(value.detach().float().reshape(-1).cpu())
    return torch.cat(avg), torch.cat(avg_sq)


@dataclass
class CurriculumState:
    weights: list[float]
    stage: int = 0
    scores: list[list[float]] = field(default_factory=list)
    noise: list[list[float]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)


class Curriculum(Plugin):
    """The group weights the stream draws with, and the influence estimate that updates them."""

    name = "curriculum"

    def __init__(self, cfg: DictConfig, groups: int):
        self.cfg, self.settings, self.seed = cfg, cfg.trainer.curriculum, cfg.seed
        self.state = CurriculumState(weights=[1 / groups] * groups)
        self.projection = Projection(self.settings.projection_dim, cfg.seed)

    def attach(self, loop: "Loop") -> None:
        """Stage ends in examples, and each stage's training sample (one pass over the shards)."""
        self.loop = loop
        ends = itertools.accumulate(self.settings.stage_epochs)
        self.boundaries = [round(end * loop.examples_per_epoch) for end in ends]
        self.train = influence_samples(
            loop.data_dir,
            self.cfg.data.max_history,
            self.settings.train_examples,
            self.seed,
            len(self.boundaries) or 1,
        )
        self.valid_split = load_eval_set(loop.data_dir, "valid")

    def samples(self, stage: int) -> tuple[list[dict], list[dict]]:
        """This rank's share of a stage's training and validation examples, drawn afresh for
        each stage: the scores accumulated over stages then average over that many samples."""
        loop = self.loop
        train = self.train[stage]
        valid = self.valid_split.subsample(self.settings.valid_examples, [self.seed, stage])
        mine = np.arange(loop.rank, valid.users.size, loop.world_size)
        groups = loop.codes.num_groups
        examples = valid.take(mine).examples()
        for ex, row in zip(examples, mine, strict=True):
            ex["group"] = int(row % groups)  # mixed over the groups, whatever the world size
        return train[loop.rank :: loop.world_size], examples

    def group_weights(self) -> np.ndarray:
        return np.asarray(self.state.weights)

    def due(self, samples: int) -> bool:
        """Whether the current stage has ended (`samples`: examples trained, all ranks)."""
        stage = self.state.stage
        return stage < len(self.boundaries) and samples >= self.boundaries[stage]

    def batches(self, examples: list[dict], group: int | None) -> Iterator[Batch]:
        """The examples in length-sorted batches, read in `group` (None: each its own)."""
        loop = self.loop
        for chunk in length_batches(examples, self.settings.batch_items):
            rows = collate(chunk)
            groups = [ex["group"] if group is None else group for ex in chunk]
            rows["group"] = torch.tensor(groups, dtype=torch.long)
            yield Batch.coded(rows, loop.codes, loop.device)

    def chunk_gradients(
        self, examples: list[dict], group: int | None, total: int
    ) -> list[torch.Tensor]:
        """The mean gradient of each of `trainer.curriculum.chunks` chunks of a sample of
        `total` examples, dealt by their index in the whole sample (rank r holds indices r,
        r + world, ...), so the chunks are the same on any worker count (a collective)."""
        loop = self.loop
        count = min(self.settings.chunks, max(1, total))
        index = loop.rank + loop.world_size * np.arange(len(examples))
        return [
            mean_gradient(
                loop.eval_model,
                loop.objective,
                self.batches([examples[i] for i in np.flatnonzero(index % count == c)], group),
                loop.device,
            )
            for c in range(count)
        ]

    def scores(self) -> tuple[list[float], list[float]]:
        """Each group's influence now, Adam direction of its training gradient . validation
        gradient, and the bootstrap noise of its difference from the groups' mean (a
        collective): every training chunk's direction against every validation chunk."""
        loop = self.loop
        train, valid = self.samples(self.state.stage)
        stage = self.state.stage
        valid_total = min(self.settings.valid_examples, self.valid_split.users.size)
        targets = [self.projection(g) for g in self.chunk_gradients(valid, None, valid_total)]
        avg, avg_sq = moments(loop.engine)
        betas = loop.engine.optimizer.param_groups[0]["betas"]
        eps = loop.engine.optimizer.param_groups[0]["eps"]
        per_chunk = []
        for g in range(loop.codes.num_groups):
            directions = [
                self.projection(adam_direction(grad, avg, avg_sq, betas, eps))
                for grad in self.chunk_gradients(train, g, len(self.train[stage]))
            ]
            per_chunk.append(chunk_scores(directions, targets))
        per_chunk = np.stack(per_chunk)
        noise = bootstrap_noise(per_chunk, self.settings.bootstrap, self.seed * 1_000 + stage)
        return per_chunk.mean((1, 2)).tolist(), noise.tolist()

    def step_end(self, writer: SummaryWriter | None) -> bool:
        if self.due(self.loop.progress.samples):
            self.update(writer)
        return False

    def update(self, writer: SummaryWriter | None) -> None:
        """Ends a stage: scores the groups and re-weights them (every rank, together)."""
        from genrec.trainer.engine import full_state_dict

        loop = self.loop
        started = time.perf_counter()
        loop.eval_model.load_state_dict(full_state_dict(loop.engine))
        loop.eval_model.eval()  # no dropout: the estimate is the same on any worker count
        scores, noise = self.scores()
        s = self.state
        s.scores.append(scores)
        s.noise.append(noise)
        s.lrs.append(float(loop.engine.get_lr()[0]))
        tau, z = self.settings.tau, self.settings.noise_z
        s.weights = group_weights(s.scores, s.lrs, tau, s.noise, z).tolist()
        s.stage += 1
        seconds = time.perf_counter() - started
        p = loop.progress
        last = s.stages[-1] if s.stages else {"samples": 0, "train_seconds": 0.0, "drawn": []}
        drawn_before = np.sum([stage["drawn"] for stage in s.stages], axis=0)
        record = {
            "stage": s.stage,
            "step": p.step,
            "epoch": loop.epoch(),
            "lr": s.lrs[-1],
            "scores": scores,
            "noise": noise,
            "weights": s.weights,
            # Examples the workers drew in each group during the stage that just ended.
            "drawn": (np.asarray(p.groups) - drawn_before).astype(int).tolist(),
            "seconds": round(seconds, 3),
            "samples": p.samples,
            "train_seconds": round(p.train_seconds, 3),
        }
        trained = (p.train_seconds - last["train_seconds"]) / max(p.samples - last["samples"], 1)
        record["share_of_epoch"] = round(seconds / (trained * loop.examples_per_epoch), 4)
        s.stages.append(record)
        if writer is not None:
            for g, (score, weight) in enumerate(zip(scores, s.weights, strict=True)):
                writer.add_scalar(f"curriculum/weight_{g}", weight, loop.progress.step)
                writer.add_scalar(f"curriculum/score_{g}", score, loop.progress.step)
                writer.add_scalar(f"curriculum/noise_{g}", noise[g], loop.progress.step)
            writer.add_scalar("curriculum/seconds", seconds, loop.progress.step)
        if loop.rank == 0:
            shown = " ".join(f"{w:.3f}" for w in s.weights)
            log.info(
                "curriculum stage %d (epoch %.2f; estimate %.1f s, %.1f%% of an epoch): weights %s",
                s.stage,
                loop.epoch(),
                seconds,
                100 * record["share_of_epoch"],
                shown,
            )

    def summary(self) -> dict[str, Any]:
        """The curriculum's state, and the examples drawn in each group since its last stage
        (with its final weights)."""
        drawn = np.asarray(self.loop.progress.groups)
        drawn = drawn - np.sum([stage["drawn"] for stage in self.state.stages], axis=0)
        return {"curriculum": self.state_dict() | {"drawn_after": drawn.astype(int).tolist()}}

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = CurriculumState(**state)
