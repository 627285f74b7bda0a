"""The ranking actor pool: Ray actors that hold a trained model and rank users for `genrec
evaluate` and `genrec recommend`.

The users to rank (one or more splits) go to the object store once; every split is cut into
the batches one process would cut (`evaluate.batch_size` users, in row order), and a Ray Data
`map_batches` over the batch numbers hands them to `cluster.rank_actors` actors (a GPU each
when `cluster.use_gpu`). Each actor loads the model, its IDs and its ranker once and returns,
per batch, the targets' ranks (evaluation) or the top-k items and scores (recommendation).
The batches are the single-process ones, so the results equal `local_ranks` to the last digit
on any number of actors. Ray Data restarts a lost actor and retries its batches; the driver
checks that every batch came back exactly once (`cluster.fail_at_step`, the drill: each
actor is SIGKILLed once when it reaches that batch).
"""

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import ray
from omegaconf import DictConfig
from ray.data import DataContext

from genrec.cluster.runtime import ray_session
from genrec.data_pipeline.prepared import EvalSet
from genrec.errors import GenrecError
from genrec.provenance import to_plain

BLOCKS_PER_ACTOR = 16


def batch_starts(splits: list[EvalSet], batch_size: int) -> list[tuple[int, int, int]]:
    """(split, first row, end row) of every batch, split after split."""
    return [
        (index, start, min(start + batch_size, split.users.size))
        for index, split in enumerate(splits)
        for start in range(0, split.users.size, batch_size)
    ]


def every_batch_once(numbers: list[int], total: int) -> None:
    """Fails unless the sorted batch numbers that came back are 0..total-1, each once."""
    if numbers != list(range(total)):
        missing = sorted(set(range(total)) - set(numbers))
        raise GenrecError(
            f"the ranking pool returned {len(numbers)} batches for {total} "
            f"(missing {missing[:5]}, repeated {len(numbers) - len(set(numbers))})"
        )


class RankActor:
    """One pool actor: the model, its IDs and ranker on the actor's device, and the splits."""

    def __init__(self, job: dict[str, Any], splits: list[EvalSet]):
        import torch

        from genrec.config import config_from_dict
        from genrec.methods import method_spec
        from genrec.trainer.engine import resolve_device
        from genrec.trainer.evaluate import load_ranking_model

        cfg = config_from_dict(job["config"])
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(cfg.cluster.threads_per_worker or max(1, int(cpus)))
        self.splits = ray.get(splits) if isinstance(splits, ray.ObjectRef) else splits
        self.ranking = load_ranking_model(
            cfg,
            method_spec(cfg.method),
            Path(job["checkpoint"]),
            [Path(table) for table in job["tables"]],
            job["num_items"],
            resolve_device(cfg.trainer.device),
        )
        self.batches = batch_starts(self.splits, cfg.evaluate.batch_size)
        self.k, self.lists = job["k"], job["lists"]
        self.drill = cfg.cluster.fail_at_step

    def __call__(self, work: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch (`map_batches(batch_size=1)`): its number and its ranks or lists."""
        (number,) = work["data"]
        drill = self.drill and number == self.drill
        if drill and not ray.get_runtime_context().was_current_actor_reconstructed:
            os.kill(os.getpid(), signal.SIGKILL)  # the drill: this actor is lost, once
        split_index, start, stop = self.batches[int(number)]
        split, rows = self.splits[split_index], np.arange(start, stop)
        if not self.lists:
            return {"batch": work["data"], "ranks": self.ranking.ranks(split, rows, self.k)[None]}
        items, scores = self.ranking.top_k(split, rows, self.k)
        return {"batch": work["data"], "items": items[None], "scores": scores[None]}


class RankPool:
    """Ranks users of a trained model on the actor pool, in a Ray session of its own unless
    one is open: `ranks(splits, k)` for evaluation, `top_k(split, k)` for recommendation."""

    def __init__(
        self, cfg: DictConfig, checkpoint: Path, tables: list[Path], num_items: int
    ) -> None:
        self.cfg = cfg
        self.job = {
            "config": to_plain(cfg),
            "checkpoint": str(Path(checkpoint).absolute()),
            "tables": [str(Path(table).absolute()) for table in tables],
            "num_items": num_items,
        }

    def _run(self, splits: list[EvalSet], k: int, lists: bool) -> list[dict[str, np.ndarray]]:
        """Every batch's output, in batch order, each exactly once."""
        cluster = self.cfg.cluster
        batches = batch_starts(splits, self.cfg.evaluate.batch_size)
        if not batches:
            return []
        with ray_session(cluster):
            DataContext.get_current().print_on_execution_start = False
            # Batch numbers from the object store (no read tasks to compete with the actors), in
            # blocks enough for every actor to have work and a lost one to lose little.
            blocks = min(len(batches), BLOCKS_PER_ACTOR * cluster.rank_actors)
            work = ray.data.from_numpy(np.array_split(np.arange(len(batches)), blocks))
            ranked = work.map_batches(
                RankActor,
                fn_constructor_kwargs={
                    "job": {**self.job, "k": k, "lists": lists},
                    "splits": ray.put(splits),
                },
                batch_size=1,
                concurrency=cluster.rank_actors,
                num_cpus=cluster.threads_per_worker or 1,
                num_gpus=1 if cluster.use_gpu else 0,
            )
            rows = sorted(ranked.iter_rows(), key=lambda row: int(row["batch"]))
        every_batch_once([int(row["batch"]) for row in rows], len(batches))
        return rows

    def ranks(self, splits: list[EvalSet], k: int) -> list[np.ndarray]:
        """Each split's targets' ranks in their top-k lists, in row order."""
        rows = self._run(splits, k, lists=False)
        parts: list[list[np.ndarray]] = [[] for _ in splits]
        batches = batch_starts(splits, self.cfg.evaluate.batch_size)
        for (split_index, _, _), row in zip(batches, rows, strict=True):
            parts[split_index].append(np.asarray(row["ranks"]))
        return [np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for p in parts]

    def top_k(self, split: EvalSet, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, scores) [users, k] of the split's users, in row order."""
        rows = self._run([split], k, lists=True)
        if not rows:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
        items = np.concatenate([np.asarray(row["items"]) for row in rows])
        return items, np.concatenate([np.asarray(row["scores"]) for row in rows])
