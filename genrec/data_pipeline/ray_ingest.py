"""Resumable streaming ingest on Ray Data: every epoch laid out as one stream of work units.

Ray Data cannot resume half way through an epoch, so genrec builds it: a work unit is one shard
in one epoch (the shard order reshuffled per epoch from the seed), and all epochs form one
stream that `streaming_split` deals to the training workers. Workers note which rows the model
has trained on (`PositionTracker`); a checkpoint stores the `DataPosition` they advance; a
resumed run publishes it on the run's `PositionBoard`, so read tasks skip finished units without
opening them and drop the rows already trained on from the others.
"""

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.shards import read_shard
from genrec.data_pipeline.streaming import (
    Example,
    collate,
    length_grouped,
    prefix_examples,
    shuffled,
)


@dataclass
class DataPosition:
    """Finished work units, and the rows trained on in unfinished ones (the offset); a named
    state of every training checkpoint."""

    done: list[int] = field(default_factory=list)
    rows: dict[int, list[int]] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        rows = {str(unit): sorted(trained) for unit, trained in self.rows.items()}
        return {"done": sorted(self.done), "rows": rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = list(state["done"])
        self.rows = {int(unit): list(rows) for unit, rows in state["rows"].items()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "DataPosition":
        position = cls()
        position.load_state_dict(state)
        return position

    def advance(self, workers: Iterable[dict[int, list[int]]], sizes: list[int]) -> None:
        """Adds every worker's trained rows; units whose rows are all trained are done."""
        rows: dict[int, set[int]] = defaultdict(set)
        for local in [self.rows, *workers]:
            for unit, trained in local.items():
                rows[unit].update(trained)
        done = set(self.done) | {unit for unit, r in rows.items() if len(r) == sizes[unit]}
        self.done = sorted(done)
        self.rows = {unit: sorted(r) for unit, r in rows.items() if unit not in done}


def work_units(num_shards: int, epochs: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, shard) in stream order."""
    return [
        (epoch, int(shard))
        for epoch in range(epochs)
        for shard in np.random.default_rng([seed, epoch]).permutation(num_shards)
    ]


@ray.remote(num_cpus=0)
class PositionBoard:
    """One run's data position, read by its read tasks, and a record of what each attempt read."""

    def __init__(self) -> None:
        self.attempts: list[dict[str, Any]] = []

    def start(self, position: dict[str, Any], step: int) -> int:
        self.attempts.append({"step": step, "position": position, "read": []})
        return len(self.attempts)

    def position(self) -> dict[str, Any]:
        return self.attempts[-1]["position"]

    def read(self, unit: int) -> None:
        self.attempts[-1]["read"].append(unit)

    def history(self) -> list[dict[str, Any]]:
        return self.attempts


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


class PositionTracker:
    """The rows this worker has trained on: a row counts once all its examples were trained."""

    def __init__(self) -> None:
        self.pending: dict[tuple[int, int], int] = {}
        self.rows: dict[int, set[int]] = defaultdict(set)
        self.units_read: set[int] = set()

    def received(self, unit: int, row: int, examples: int) -> None:
        self.units_read.add(unit)
        if examples == 0:
            self.rows[unit].add(row)
        else:
            self.pending[(unit, row)] = examples

    def trained(self, sources: np.ndarray) -> None:
        for unit, row in sources.tolist():
            key = (unit, row)
            self.pending[key] -= 1
            if not self.pending[key]:
                del self.pending[key]
                self.rows[unit].add(row)

    def local(self) -> dict[int, list[int]]:
        return {unit: sorted(rows) for unit, rows in self.rows.items()}


def stream_batches(
    sequences: Iterable[dict[str, np.ndarray]],
    tracker: PositionTracker,
    max_history: int,
    batch_size: int,
    shuffle_buffer: int,
    rng: np.random.Generator,
    group_weights: np.ndarray | None = None,
    pool_batches: int = 32,
) -> Iterator[dict[str, Any]]:
    """Collated, length-grouped, shuffled prefix-example batches from Ray batches of sequences;
    each batch keeps its examples' (unit, row) as `source` for the tracker.

    Every example is read in one of G code groups (`group`), drawn with `group_weights`
    (None: the single group 0)."""

    def examples() -> Iterator[Example]:
        for block in sequences:
            for unit, row, user, items in zip(
                block["unit"], block["row"], block["user"], block["items"], strict=True
            ):
                tracker.received(int(unit), int(row), max(len(items) - 1, 0))
                for example in prefix_examples(int(user), np.asarray(items), max_history):
                    example["source"] = (int(unit), int(row))
                    yield example

    stream = shuffled(examples(), shuffle_buffer, rng) if shuffle_buffer > 1 else examples()
    for batch in length_grouped(stream, batch_size, pool_batches, rng):
        groups = (
            np.zeros(len(batch), dtype=np.int64)
            if group_weights is None
            else rng.choice(len(group_weights), size=len(batch), p=group_weights)
        )
        yield {
            **collate(batch),
            "group": torch.from_numpy(groups),
            "source": np.array([ex["source"] for ex in batch]),
        }
