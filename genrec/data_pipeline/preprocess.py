"""From a raw log to per-user chronological sequences over contiguous ids, after k-core filtering.

All steps are vectorised over the whole log (pyarrow hashing, numpy bincount and sorting).
"""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.data_pipeline.raw_log import RawLog
from genrec.errors import DataError


@dataclass
class Sequences:
    """Users' item sequences in time order, as CSR arrays over contiguous ids.

    User u's items are `items[offsets[u]:offsets[u + 1]]`; `user_ids[u]`, `item_ids[i]` are raw.
    """

    offsets: np.ndarray  # int64 [num_users + 1]
    items: np.ndarray  # int32 [num_interactions]
    user_ids: pa.Array
    item_ids: pa.Array

    @property
    def num_users(self) -> int:
        return self.offsets.size - 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class FilterStats:
    raw_interactions: int
    raw_users: int
    raw_items: int
    rounds: int


def sorted_unique(arrays: list[pa.Array]) -> pa.Array:
    """The distinct values, sorted (so ids already 0..n-1 keep their order)."""
    uniques = pc.unique(pa.chunked_array(arrays))
    return uniques.take(pc.sort_indices(uniques))


def dense_ids(present: np.ndarray) -> np.ndarray:
    """New contiguous ids of the present entries, in order (-1 elsewhere)."""
    return np.where(present, np.cumsum(present) - 1, -1).astype(np.int32)


def encode(values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Codes into the sorted unique values, so ids that were already 0..n-1 keep their order."""
    vocab = sorted_unique([values])
    codes = pc.index_in(values, value_set=vocab)
    return codes.to_numpy(zero_copy_only=False).astype(np.int32), vocab


def k_core(
    users: np.ndarray, items: np.ndarray, min_user: int, min_item: int
) -> tuple[np.ndarray, int]:
    """Indices of the interactions that survive iterative k-core filtering, and the rounds taken.

    Counts are updated by subtracting what each round drops, so later rounds stay cheap.
    """
    alive = np.ones(users.size, dtype=bool)
    user_count, item_count = np.bincount(users), np.bincount(items)
    rounds = 0
    while True:
        rounds += 1
        drop = alive & ((user_count < min_user)[users] | (item_count < min_item)[items])
        if not drop.any():
            return np.flatnonzero(alive), rounds
        alive &= ~drop
        user_count -= np.bincount(users[drop], minlength=user_count.size)
        item_count -= np.bincount(items[drop], minlength=item_count.size)


def _compact(codes: np.ndarray, vocab: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Renumber the surviving codes 0..n-1, preserving order, and drop vanished vocab entries."""
    present = np.zeros(len(vocab), dtype=bool)
    present[codes] = True
    return dense_ids(present)[codes], vocab.filter(pa.array(present))


def build_sequences(
    log: RawLog, min_user: int, min_item: int, source: str
) -> tuple[Sequences, FilterStats]:
    users, user_vocab = encode(log.users)
    items, item_vocab = encode(log.items)
    keep, rounds = k_core(users, items, min_user, min_item)
    stats = FilterStats(users.size, len(user_vocab), len(item_vocab), rounds)
    if keep.size == 0:
        raise DataError(
            source,
            f"every user and item vanished under k-core filtering (min_user_interactions="
            f"{min_user}, min_item_interactions={min_item}) of {users.size} interactions",
        )
    users, user_vocab = _compact(users[keep], user_vocab)
    items, item_vocab = _compact(items[keep], item_vocab)
    if log.times is None:
        order = np.argsort(users, kind="stable")
    else:
        order = np.lexsort((log.times[keep], users))
    counts = np.bincount(users, minlength=len(user_vocab))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    seqs = Sequences(offsets, items[order].astype(np.int32), user_vocab, item_vocab)
    return seqs, stats


def ragged_gather(
    values: np.ndarray, starts: np.ndarray, stops: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate values[starts[k]:stops[k]] for all k, returning (offsets, flat values)."""
    lengths = stops - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    index = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - starts, lengths)
    return offsets, values[index]
