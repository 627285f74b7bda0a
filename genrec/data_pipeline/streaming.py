"""Streaming the training shards as a PyTorch IterableDataset (Ray Data: ray_ingest.py).

Neither loads the dataset into one process: each reader opens only its own shards (or, when
there are fewer shards than readers, every reader skims all shards and keeps its own samples).
Examples are every prefix of a user's training sequence predicting the next item, as dicts;
the training stream cuts them (and the causal encoder's windows) as arrays
(example_arrays.py).
"""

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from genrec.data_pipeline.example_arrays import Sequences, cut_prefixes
from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.shards import read_shard

if TYPE_CHECKING:
    import ray.data

Example = dict[str, Any]


def shard_checksums(data_dir: str | Path) -> dict[Path, str]:
    """Each shard's path and sha256, in manifest order."""
    data_dir = Path(data_dir)
    return {data_dir / s["path"]: s["sha256"] for s in load_manifest(data_dir)["shards"]}


def shard_paths(data_dir: str | Path) -> list[Path]:
    return list(shard_checksums(data_dir))


def prefix_examples(
    user: int, seq: np.ndarray, max_history: int, first: int = 1
) -> Iterator[Example]:
    """Each item from position `first` on as a target, after up to max_history before it (one
    sequence's `cut_prefixes`, as dicts)."""
    cut = cut_prefixes(Sequences.of_lists([seq], np.array([user])), max_history, seed=0)
    for t in range(first - 1, len(cut)):
        history = cut.history[t, max_history - int(cut.length[t]) :]
        yield {"user": user, "history": history, "target": int(cut.target[t])}


def shuffled(examples: Iterator[Example], size: int, rng: np.random.Generator) -> Iterator[Example]:
    """A local shuffle buffer: streams stay streams, yet neighbours in a shard get mixed."""
    buffer: list[Example] = []
    for example in examples:
        if len(buffer) < size:
            buffer.append(example)
            continue
        slot = int(rng.integers(size))
        yield buffer[slot]
        buffer[slot] = example
    rng.shuffle(buffer)
    yield from buffer


def _loader_worker() -> tuple[int, int]:
    """(this DataLoader worker, number of workers); (0, 1) outside a worker process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class TrainExamples(IterableDataset):
    """Prefix examples from the shards of `data_dir`, split across ranks and loader workers.

    The shard order is reshuffled each epoch (`set_epoch`) from `seed`; all readers agree on it.
    """

    def __init__(
        self,
        data_dir: str | Path,
        max_history: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1024,
    ):
        self.checksums = shard_checksums(data_dir)
        self.paths = list(self.checksums)
        self.max_history = max_history
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def sequences(self) -> Iterator[tuple[int, np.ndarray]]:
        """This reader's (user, training sequence) samples for the current epoch.

        Shards are dealt to ranks, then to loader workers within a rank, so a rank reads the
        same samples whatever its number of workers. A level with more readers than shards
        deals samples instead of shards.
        """
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.paths))
        paths = [self.paths[i] for i in order]
        deals: list[tuple[int, int]] = []
        for part, parts in ((self.rank, self.world_size), _loader_worker()):
            if not deals and len(paths) >= parts:
                paths = paths[part::parts]
            else:
                deals.append((part, parts))
        samples = itertools.chain.from_iterable(
            read_shard(path, self.checksums[path]) for path in paths
        )
        for part, parts in deals:
            samples = itertools.islice(samples, part, None, parts)
        return samples

    def __iter__(self) -> Iterator[Example]:
        worker, workers = _loader_worker()
        reader = self.rank * workers + worker
        examples = (
            ex
            for user, seq in self.sequences()
            for ex in prefix_examples(user, seq, self.max_history)
        )
        if self.shuffle_buffer <= 1:
            return examples
        rng = np.random.default_rng([self.seed, self.epoch, reader])
        return shuffled(examples, self.shuffle_buffer, rng)


def right_aligned(rows: list[np.ndarray], pad: int = -1) -> torch.Tensor:
    """Rows of different lengths [B, longest], right-aligned: the last column is the newest."""
    width = max(len(row) for row in rows)
    out = np.full((len(rows), width), pad, dtype=np.int64)
    for index, row in enumerate(rows):
        if len(row):
            out[index, width - len(row) :] = row
    return torch.from_numpy(out)


def collate(examples: list[Example]) -> dict[str, torch.Tensor]:
    """Left-pad histories (and windows' targets, aligned with them) so the most recent item is
    always in the last column."""
    targets = [ex["target"] for ex in examples]
    return {
        "user": torch.tensor([ex["user"] for ex in examples], dtype=torch.long),
        "history": right_aligned([ex["history"] for ex in examples]),
        "target": (
            torch.tensor(targets, dtype=torch.long)
            if np.isscalar(targets[0])
            else right_aligned(targets)
        ),
    }


def length_batches(examples: list[Example], max_items: int) -> Iterator[list[Example]]:
    """All the examples, shortest history first, cut into batches of at most `max_items`
    padded history items (at least one example each): a fixed sample scored once, where a
    random batch would pad a few long histories into every row."""
    batch: list[Example] = []
    width = 0
    for ex in sorted(examples, key=lambda ex: len(ex["history"])):
        wider = max(width, len(ex["history"]), 1)
        if batch and (len(batch) + 1) * wider > max_items:
            yield batch
            batch, wider = [], max(len(ex["history"]), 1)
        batch.append(ex)
        width = wider
    if batch:
        yield batch


def ray_eval_examples(data_dir: str | Path, split: str) -> "ray.data.Dataset":
    """The leave-one-out `valid` or `test` examples (user, history, target) as a Ray Dataset."""
    import ray.data

    return ray.data.read_parquet(str(Path(data_dir) / f"{split}.parquet"))
