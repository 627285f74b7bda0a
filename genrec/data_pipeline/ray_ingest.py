"""Resumable streaming ingest on Ray Data: every epoch laid out as one stream of work units.

Ray Data cannot resume half way through an epoch, so genrec builds it: a work unit is one shard
in one epoch (the shard order reshuffled per epoch from the seed), and all epochs form one
stream that `streaming_split` deals to the training workers. Workers note which rows the model
has trained on (`PositionTracker`); a checkpoint stores the `DataPosition` they advance; a
resumed run publishes it on the run's `PositionBoard`, so read tasks skip finished units without
opening them and drop the rows already trained on from the others.
"""

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.train import DataConfig
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.shards import read_shard
from genrec.data_pipeline.streaming import (
    Example,
    collate,
    length_grouped,
    prefix_examples,
    shuffled,
    targets_of,
    window_examples,
)
from genrec.data_pipeline.subsample import kept_users


@dataclass
class DataPosition:
    """Finished work units, and the rows trained on in unfinished ones (the offset); a named
    state of every training checkpoint. `in_flight` is what sat in the workers' buffers when it
    was taken: rows received but not fully trained, with how many of their examples were. A
    resumed run reads those rows again, so exactly those examples are trained twice."""

    done: list[int] = field(default_factory=list)
    rows: dict[int, list[int]] = field(default_factory=dict)
    in_flight: dict[int, dict[int, int]] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        rows = {str(unit): sorted(trained) for unit, trained in self.rows.items()}
        in_flight = {
            str(unit): {str(row): n for row, n in sorted(rows.items())}
            for unit, rows in self.in_flight.items()
        }
        return {"done": sorted(self.done), "rows": rows, "in_flight": in_flight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = list(state["done"])
        self.rows = {int(unit): list(rows) for unit, rows in state["rows"].items()}
        self.in_flight = {
            int(unit): {int(row): n for row, n in rows.items()}
            for unit, rows in state["in_flight"].items()
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "DataPosition":
        position = cls()
        position.load_state_dict(state)
        return position

    def advance(self, workers: Iterable["TrackerState"], sizes: list[int]) -> None:
        """Adds every worker's trained rows (units whose rows are all trained are done) and
        takes their in-flight rows as they are now."""
        rows: dict[int, set[int]] = defaultdict(set)
        in_flight: dict[int, dict[int, int]] = defaultdict(dict)
        for unit, trained in self.rows.items():
            rows[unit].update(trained)
        for worker in workers:
            for unit, trained in worker["rows"].items():
                rows[unit].update(trained)
            for unit, row, examples in worker["in_flight"]:
                in_flight[unit][row] = examples
        done = set(self.done) | {unit for unit, r in rows.items() if len(r) == sizes[unit]}
        self.done = sorted(done)
        self.rows = {unit: sorted(r) for unit, r in rows.items() if unit not in done}
        self.in_flight = dict(in_flight)


def work_units(num_shards: int, epochs: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, shard) in stream order."""
    return [
        (epoch, int(shard))
        for epoch in range(epochs)
        for shard in np.random.default_rng([seed, epoch]).permutation(num_shards)
    ]


@ray.remote(num_cpus=0)
class PositionBoard:
    """One run's data position, read by its read tasks, and a record of each attempt: where it
    started, the units it opened, the steps it checkpointed at and, when asked (an audit), the
    last step it reached and every row each worker received. `start_board` places it on the
    driver's node, so it outlives any worker and any worker node."""

    def __init__(self) -> None:
        self.attempts: list[dict[str, Any]] = []

    def start(self, position: dict[str, Any], step: int) -> int:
        record = {"step": step, "position": position, "read": [], "checkpoints": []}
        self.attempts.append(record | {"reached": step, "received": {}})
        return len(self.attempts)

    def position(self) -> dict[str, Any]:
        return self.attempts[-1]["position"]

    def read(self, unit: int) -> None:
        self.attempts[-1]["read"].append(unit)

    def reached(self, attempt: int, step: int) -> None:
        self.attempts[attempt - 1]["reached"] = step

    def checkpointed(self, attempt: int, step: int) -> None:
        self.attempts[attempt - 1]["checkpoints"].append(step)

    def received(self, attempt: int, rank: int, rows: list[list[int]]) -> None:
        self.attempts[attempt - 1]["received"].setdefault(str(rank), []).extend(rows)

    def history(self) -> list[dict[str, Any]]:
        return self.attempts


def start_board() -> "ray.actor.ActorHandle":
    """A run's board, on the driver's node: a lost worker node must not take the run's record
    with it (Ray would place a zero-CPU actor on any node)."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return PositionBoard.options(scheduling_strategy=here).remote()


class EveryRowSplit(DataConfig):
    """Ray Train's dataset split without `equal=True`, which drops up to world_size - 1 rows
    of every stream so that workers get the same count. genrec's loop lets a rank that runs
    dry step with weight 0 until the others finish, so every row is trained."""

    def configure(
        self,
        datasets: dict[str, ray.data.Dataset],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: list[str] | None,
        **kwargs: Any,
    ) -> list[dict[str, ray.data.DataIterator]]:
        output: list[dict[str, ray.data.DataIterator]] = [{} for _ in range(world_size)]
        for name, dataset in datasets.items():
            dataset = dataset.copy(dataset)
            dataset.context.execution_options = self._resolve_execution_options(name)
            splits = dataset.streaming_split(world_size, locality_hints=worker_node_ids)
            for rank, split in enumerate(splits):
                output[rank][name] = split
        return output


def _read_unit(
    row: dict[str, Any], data_dir: str, num_items: int, board: Any
) -> Iterator[dict[str, Any]]:
    """The sequences of one work unit that the model has not trained on yet."""
    unit = int(row["unit"])
    position = DataPosition.from_state(ray.get(board.position.remote()))
    if unit in set(position.done):
        return
    board.read.remote(unit)
    skip = set(position.rows.get(unit, ()))
    path, sha256 = Path(data_dir) / row["path"], row["sha256"]
    for index, (user, items) in enumerate(read_shard(path, sha256, num_items)):
        if index not in skip:
            yield {"unit": unit, "row": index, "user": user, "items": items}


def training_stream(data_dir: str | Path, epochs: int, seed: int, board: Any) -> "ray.data.Dataset":
    """Every epoch's user sequences as one Ray Dataset, one block per work unit, so readers of
    different shards run in parallel and a slow shard holds up no other."""
    manifest = load_manifest(data_dir)
    shards = manifest["shards"]
    units = [
        {"unit": i, "path": shards[s]["path"], "sha256": shards[s]["sha256"]}
        for i, (_, s) in enumerate(work_units(len(shards), epochs, seed))
    ]
    items = ray.data.from_items(units, override_num_blocks=len(units))
    kwargs = {"data_dir": str(data_dir), "num_items": manifest["num_items"], "board": board}
    return items.flat_map(_read_unit, fn_kwargs=kwargs)


def unit_sizes(data_dir: str | Path, epochs: int, seed: int) -> list[int]:
    """Rows in each work unit, in stream order."""
    shards = load_manifest(data_dir)["shards"]
    return [shards[s]["users"] for _, s in work_units(len(shards), epochs, seed)]


TrackerState = dict[str, Any]


class PositionTracker:
    """The rows this worker has trained on (a row counts once all its examples were trained),
    the rows in flight, and, when `record` is set, every row received in arrival order."""

    def __init__(self, record: bool = False) -> None:
        self.examples: dict[tuple[int, int], int] = {}
        self.pending: dict[tuple[int, int], int] = {}
        self.rows: dict[int, set[int]] = defaultdict(set)
        self.record = record
        self.arrivals: list[list[int]] = []

    def received(self, unit: int, row: int, examples: int) -> None:
        if self.record:
            self.arrivals.append([unit, row])
        if examples == 0:
            self.rows[unit].add(row)
        else:
            self.pending[(unit, row)] = self.examples[(unit, row)] = examples

    def trained(self, sources: np.ndarray) -> None:
        for unit, row in sources.tolist():
            key = (unit, row)
            self.pending[key] -= 1
            if not self.pending[key]:
                del self.pending[key], self.examples[key]
                self.rows[unit].add(row)

    def state(self) -> TrackerState:
        """Trained rows since the last `flush`, and the rows in flight with the examples of
        each already trained."""
        in_flight = [
            [unit, row, self.examples[(unit, row)] - left]
            for (unit, row), left in self.pending.items()
        ]
        return {
            "rows": {unit: sorted(rows) for unit, rows in self.rows.items()},
            "in_flight": in_flight,
        }

    def flush(self) -> list[list[int]]:
        """Forgets the trained rows (now in the position); returns the arrivals since the last
        flush."""
        self.rows.clear()
        arrivals, self.arrivals = self.arrivals, []
        return arrivals


def group_draws(seed: int, unit: int, row: int, count: int) -> np.ndarray:
    """Uniforms [count] for the examples of one row in one work unit: a pure function of the
    seed and the example, so any worker count, order or restart draws the same groups."""
    return np.random.default_rng([seed, 1, unit, row]).random(count)


def draw_groups(uniforms: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Group g with probability weights[g], by inverting the cumulative weights."""
    edges = np.cumsum(weights)
    return np.minimum(np.searchsorted(edges / edges[-1], uniforms, side="right"), len(weights) - 1)


def stream_batches(
    sequences: Iterable[dict[str, np.ndarray]],
    tracker: PositionTracker,
    max_history: int,
    batch_size: int,
    shuffle_buffer: int,
    rng: np.random.Generator,
    group_weights: Callable[[], np.ndarray | None] | None = None,
    seed: int = 0,
    pool_batches: int = 32,
    stride: int | None = None,
    data_fraction: float = 1.0,
) -> Iterator[dict[str, Any]]:
    """Collated, length-grouped, shuffled batches of `batch_size` targets from Ray batches of
    sequences: prefix examples, or with a `stride` the causal encoder's windows. Each batch
    keeps the (unit, row) of each of its targets as `source` for the tracker.

    Every example, history and target alike, is read in one of G code groups (`group`), drawn
    with the weights `group_weights()` holds when its batch leaves (None: the single group 0);
    a sequence's windows share the draw of its first target (one tokenizer per sequence).
    Users outside the `data_fraction` subset (genrec/data_pipeline/subsample.py) train
    nothing; their rows count as trained."""

    def examples() -> Iterator[Example]:
        for block in sequences:
            kept = kept_users(block["user"], data_fraction, seed)
            for unit, row, user, items, keep in zip(
                block["unit"], block["row"], block["user"], block["items"], kept, strict=True
            ):
                count = max(len(items) - 1, 0) if keep else 0
                tracker.received(int(unit), int(row), count)
                if not count:
                    continue
                draws = group_draws(seed, int(unit), int(row), count)
                items = np.asarray(items)
                if stride is None:
                    cut = prefix_examples(int(user), items, max_history)
                else:
                    cut = window_examples(int(user), items, max_history, stride)
                for index, example in enumerate(cut):
                    example["source"] = (int(unit), int(row))
                    example["draw"] = draws[index if stride is None else 0]
                    yield example

    stream = shuffled(examples(), shuffle_buffer, rng) if shuffle_buffer > 1 else examples()
    for batch in length_grouped(stream, batch_size, pool_batches, rng):
        weights = None if group_weights is None else group_weights()
        groups = (
            np.zeros(len(batch), dtype=np.int64)
            if weights is None
            else draw_groups(np.array([ex["draw"] for ex in batch]), weights)
        )
        yield {
            **collate(batch),
            "group": torch.from_numpy(groups),
            "source": np.array([ex["source"] for ex in batch for _ in range(targets_of(ex))]),
        }
