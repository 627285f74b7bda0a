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
import pyarrow as pa
import ray
import torch
from ray.train import DataConfig
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from genrec.data_pipeline.example_arrays import (
    Examples,
    Sequences,
    collated,
    cut_prefixes,
    cut_windows,
    length_grouped,
    pools,
    sequence_table,
    sources,
)
from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.preprocess import ragged_gather
from genrec.data_pipeline.shards import shard_arrays
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


# Rows cut at a time: a row counts as in flight from its cut until all its examples trained,
# and a resumed run reads in-flight rows again, so a worker cuts little more than its pool.
ROWS_PER_CUT = 64
# Ray Data plans a read task in about a millisecond: 812,400 units (the 10^8 preset's 4,062
# shards x 200 epochs) as as many tasks would take minutes to start (BENCHMARKS.md).
MAX_READ_TASKS = 2000


def epoch_order(num_shards: int, epoch: int, seed: int) -> np.ndarray:
    """The order in which an epoch reads the shards."""
    return np.random.default_rng([seed, epoch]).permutation(num_shards)


def work_units(num_shards: int, epochs: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, shard) in stream order."""
    return [
        (epoch, int(shard))
        for epoch in range(epochs)
        for shard in epoch_order(num_shards, epoch, seed)
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


def _read_units(
    batch: dict[str, np.ndarray], data_dir: str, shards: Any, seed: int, num_items: int, board: Any
) -> Iterator[dict[str, np.ndarray]]:
    """The sequences of each work unit in `batch` that the model has not trained on yet, a
    unit at a time: its shard read whole into arrays and handed on as columns."""
    paths, sha256s = ray.get(shards)
    position = DataPosition.from_state(ray.get(board.position.remote()))
    done = set(position.done)
    for unit in batch["id"].tolist():
        if unit in done:
            continue
        board.read.remote(unit)
        epoch, place = divmod(unit, len(paths))
        shard = int(epoch_order(len(paths), epoch, seed)[place])
        path = Path(data_dir) / paths[shard]
        keys, offsets, items = shard_arrays(path, sha256s[shard], num_items)
        rows = np.setdiff1d(np.arange(len(keys)), position.rows.get(unit, ()))
        if len(rows):
            offsets, items = ragged_gather(items, offsets[rows], offsets[rows + 1])
            yield sequence_table(np.full(len(rows), unit), rows, keys[rows], offsets, items)


def training_stream(data_dir: str | Path, epochs: int, seed: int, board: Any) -> "ray.data.Dataset":
    """Every epoch's user sequences as one Ray Dataset: read tasks over consecutive work units
    (one each, up to MAX_READ_TASKS tasks), so readers of different shards run in parallel.
    The driver lists no units: a task finds each unit's shard from its number."""
    manifest = load_manifest(data_dir)
    shards = manifest["shards"]
    names = ray.put(([s["path"] for s in shards], [s["sha256"] for s in shards]))
    units = epochs * len(shards)
    kwargs = {
        "data_dir": str(data_dir),
        "shards": names,
        "seed": seed,
        "num_items": manifest["num_items"],
        "board": board,
    }
    stream = ray.data.range(units, override_num_blocks=min(units, MAX_READ_TASKS))
    return stream.map_batches(_read_units, batch_size=None, fn_kwargs=kwargs)


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

    def received(self, units: np.ndarray, rows: np.ndarray, examples: np.ndarray) -> None:
        """Rows arriving, with the examples each will train (0: none, trained at once)."""
        units, rows, examples = units.tolist(), rows.tolist(), examples.tolist()
        if self.record:
            self.arrivals.extend([unit, row] for unit, row in zip(units, rows, strict=True))
        for unit, row, count in zip(units, rows, examples, strict=True):
            if count:
                self.pending[(unit, row)] = self.examples[(unit, row)] = count
            else:
                self.rows[unit].add(row)

    def trained(self, sources: np.ndarray) -> None:
        """Counts the trained targets of each (unit, row) in `sources` [targets, 2]."""
        if not len(sources):
            return
        keys, counts = np.unique(sources, axis=0, return_counts=True)
        for (unit, row), count in zip(keys.tolist(), counts.tolist(), strict=True):
            key = (unit, row)
            self.pending[key] -= count
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


def draw_groups(uniforms: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Group g with probability weights[g], by inverting the cumulative weights."""
    edges = np.cumsum(weights)
    return np.minimum(np.searchsorted(edges / edges[-1], uniforms, side="right"), len(weights) - 1)


def cut_block(
    block: pa.Table,
    tracker: PositionTracker,
    max_history: int,
    stride: int | None,
    seed: int,
    data_fraction: float,
) -> Examples:
    """One Ray batch of sequences (a `sequence_table`) as examples; every row is reported to
    the tracker with its number of targets (0: nothing to train, so it counts as trained)."""
    seqs = Sequences.of(block)
    keep = kept_users(seqs.user, data_fraction, seed)
    counts = np.where(keep, np.maximum(seqs.size - 1, 0), 0)
    tracker.received(seqs.unit, seqs.row, counts)
    seqs = seqs.take(np.flatnonzero(counts))
    if stride is None:
        return cut_prefixes(seqs, max_history, seed)
    return cut_windows(seqs, max_history, stride, seed)


def stream_batches(
    sequences: Iterable[pa.Table],
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
    """Collated, length-grouped, shuffled batches of about `batch_size` targets from Ray
    batches of sequences: prefix examples, or with a `stride` the causal encoder's windows
    (genrec/data_pipeline/example_arrays.py). Each batch keeps the (unit, row) of each of its
    targets as `source` for the tracker.

    Every example, history and target alike, is read in one of G code groups (`group`), drawn
    with the weights `group_weights()` holds when its batch leaves (None: the single group 0)
    from the example's own hashed uniform, so any worker count, order or restart draws the same
    groups. Users outside the `data_fraction` subset (genrec/data_pipeline/subsample.py) train
    nothing; their rows count as trained."""
    parts = (
        cut_block(
            block.slice(start, ROWS_PER_CUT), tracker, max_history, stride, seed, data_fraction
        )
        for block in sequences
        for start in range(0, block.num_rows, ROWS_PER_CUT)
    )
    for examples, pool in pools(parts, batch_size * pool_batches, shuffle_buffer, rng):
        for batch in length_grouped(examples, pool, batch_size, rng):
            weights = None if group_weights is None else group_weights()
            groups = (
                np.zeros(len(batch), dtype=np.int64)
                if weights is None
                else draw_groups(batch.draw, weights)
            )
            yield {**collated(batch), "group": torch.from_numpy(groups), "source": sources(batch)}
