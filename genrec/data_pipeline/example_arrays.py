"""Training examples as arrays: user sequences cut into examples, pooled, shuffled, grouped by
length and collated in numpy, with no Python step per example.

A prefix example predicts one item from up to max_history items before it. The causal encoder
trains windows instead: up to max_history items in which every item predicts the next, each
window training only its newest `stride` targets (-1 marks the others), so every target is
trained once and sees at least max_history - stride + 1 items. Windows start at the first item
until they reach max_history items, so the first max_history targets see their whole history,
as prefix examples do.
"""

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from genrec.data_pipeline.hashing import hashed_uniform


@dataclass(frozen=True)
class Examples:
    """N examples as columns. `history` [N, H] is right-aligned (the newest item last, -1 pads
    on the left); `target` is [N] (one per prefix) or [N, H] aligned with the history (a
    window's, -1 where not trained here); `targets` counts each one's trained targets; `unit`
    and `row` say which sequence it was cut from, and `draw` is its uniform for a code group."""

    user: np.ndarray
    history: np.ndarray
    length: np.ndarray
    target: np.ndarray
    targets: np.ndarray
    unit: np.ndarray
    row: np.ndarray
    draw: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray | slice, width: int | None = None) -> "Examples":
        """The examples at `index`; with a width, histories (and windows' targets) cut to
        their last `width` columns before copying."""
        columns = {f.name: getattr(self, f.name) for f in fields(self)}
        if width is not None:
            columns = {
                k: v[:, v.shape[1] - width :] if v.ndim == 2 else v for k, v in columns.items()
            }
        return Examples(**{name: column[index] for name, column in columns.items()})

    @staticmethod
    def concat(parts: list["Examples"]) -> "Examples":
        if len(parts) == 1:
            return parts[0]
        return Examples(
            **{
                f.name: np.concatenate([getattr(p, f.name) for p in parts])
                for f in fields(Examples)
            }
        )


@dataclass(frozen=True)
class Sequences:
    """A block of user sequences laid end to end: sequence i is items[start[i]:start[i] +
    size[i]], from row `row[i]` of work unit `unit[i]`."""

    items: np.ndarray
    start: np.ndarray
    size: np.ndarray
    user: np.ndarray
    unit: np.ndarray
    row: np.ndarray

    @classmethod
    def of(cls, table: pa.Table) -> "Sequences":
        """A `sequence_table`'s rows, its items read in place."""
        items = table.column("items").combine_chunks()
        size = pc.list_value_length(items).to_numpy(zero_copy_only=False).astype(np.int64)
        start = np.cumsum(size) - size
        flat = pc.list_flatten(items).to_numpy(zero_copy_only=False).astype(np.int64)
        columns = (
            table.column(name).to_numpy().astype(np.int64) for name in ("user", "unit", "row")
        )
        return cls(flat, start, size, *columns)

    @classmethod
    def of_lists(cls, sequences: list[np.ndarray], user: np.ndarray) -> "Sequences":
        """Sequences given one array each, as rows 0.. of work unit 0."""
        offsets, flat = _csr(sequences)
        rows = np.arange(len(sequences))
        return cls(flat, offsets[:-1], np.diff(offsets), np.asarray(user), 0 * rows, rows)

    def take(self, index: np.ndarray) -> "Sequences":
        return Sequences(
            self.items, *(a[index] for a in (self.start, self.size, self.user, self.unit, self.row))
        )


def sequence_table(
    unit: np.ndarray, row: np.ndarray, user: np.ndarray, offsets: np.ndarray, items: np.ndarray
) -> pa.Table:
    """Sequences as Ray Data carries them: one row each, sequence i being items[offsets[i]:
    offsets[i + 1]] in an Arrow list column, so no step is taken per sequence."""
    lists = pa.LargeListArray.from_arrays(
        pa.array(np.asarray(offsets, dtype=np.int64)), pa.array(np.asarray(items, dtype=np.int32))
    )
    columns = {"unit": unit, "row": row, "user": user}
    return pa.table(
        {k: pa.array(np.asarray(v, dtype=np.int64)) for k, v in columns.items()} | {"items": lists}
    )


def sequences_table(sequences: list[np.ndarray], user: np.ndarray, unit: int = 0) -> pa.Table:
    """`sequence_table` of sequences given one array each, rows 0.. of one work unit."""
    rows = np.arange(len(sequences))
    return sequence_table(np.full(len(sequences), unit), rows, user, *_csr(sequences))


def _csr(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [n + 1], items) of n sequences laid end to end."""
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
    flat = np.concatenate(sequences).astype(np.int64) if sequences else np.zeros(0, np.int64)
    return offsets, flat


def _ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts [n]: (owner, index) of each of their sum slots, index counting 0.. per owner."""
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    return owner, np.arange(len(owner)) - first[owner]


def _right_aligned(
    items: np.ndarray, end: np.ndarray, length: np.ndarray, width: int
) -> np.ndarray:
    """[N, width]: row n holds items[end[n] - length[n]:end[n]] in its last columns, -1 before."""
    columns = np.arange(width)
    index = end[:, None] - width + columns
    valid = columns >= width - length[:, None]
    return np.where(valid, items[np.where(valid, index, 0)], -1)


def cut_prefixes(seqs: Sequences, max_history: int, seed: int) -> Examples:
    """Each item after the first of every sequence as a target, after up to max_history items;
    example t of a sequence draws hashed_uniform(seed, unit, row, t)."""
    owner, index = _ragged(np.maximum(seqs.size - 1, 0))
    end = seqs.start[owner] + index + 1
    length = np.minimum(index + 1, max_history)
    unit, row = seqs.unit[owner], seqs.row[owner]
    return Examples(
        user=seqs.user[owner],
        history=_right_aligned(seqs.items, end, length, max_history),
        length=length,
        target=seqs.items[end],
        targets=np.ones(len(owner), dtype=np.int64),
        unit=unit,
        row=row,
        draw=hashed_uniform(seed, unit, row, index),
    )


def cut_windows(seqs: Sequences, max_history: int, stride: int, seed: int) -> Examples:
    """The causal encoder's windows of every sequence (module docstring); a sequence's windows
    share one draw, hashed_uniform(seed, unit, row, 0): one tokenizer per sequence."""
    last = np.maximum(seqs.size - 1, 0)
    reach = np.minimum(last, max_history)  # trained while windows grow from the first item
    growing = -(-reach // stride)
    sliding = -(-np.maximum(last - max_history, 0) // stride)
    owner, index = _ragged(growing + sliding)
    grows = index < growing[owner]
    slid = index - growing[owner]
    trained = np.where(grows, index * stride, max_history + slid * stride)
    end = np.where(
        grows,
        np.minimum(trained + stride, reach[owner]),
        np.minimum(trained + stride, last[owner]),
    )
    length = np.minimum(end, max_history)
    base = seqs.start[owner] + end
    target = _right_aligned(seqs.items, base + 1, length, max_history)
    target[np.arange(max_history) < max_history - (end - trained)[:, None]] = -1
    unit, row = seqs.unit[owner], seqs.row[owner]
    return Examples(
        user=seqs.user[owner],
        history=_right_aligned(seqs.items, base, length, max_history),
        length=length,
        target=target,
        targets=end - trained,
        unit=unit,
        row=row,
        draw=hashed_uniform(seed, unit, row, 0),
    )


def pools(
    parts: Iterator[Examples], targets: int, shuffle_buffer: int, rng: np.random.Generator
) -> Iterator[tuple[Examples, np.ndarray]]:
    """Pools of about `targets` targets, as (examples, the pool's indices into them). With a
    shuffle buffer each pool is a random draw of whole rows (a sequence's examples) from
    everything held, leaving at least `shuffle_buffer` examples behind, so neighbours in a
    shard are mixed while the stream stays a stream; without one, arrival order. Whole rows
    keep a row's examples in one pool: a checkpoint finds in flight only the rows held (the
    pool's and the buffer's), which a resumed run reads again. Only the held-back rest is
    copied."""
    held: list[Examples] = []
    count = size = 0
    for part in parts:
        held.append(part)
        count, size = count + int(part.targets.sum()), size + len(part)
        # A draw leaves `shuffle_buffer` examples behind (counting the pool's examples at the
        # held examples' mean targets).
        while count >= targets and size * (count - targets) >= shuffle_buffer * count:
            examples = Examples.concat(held)
            pool, rest = _draw_rows(examples, targets, shuffle_buffer > 1, rng)
            if len(rest) < shuffle_buffer:  # the rows drawn overshot: wait for more
                break
            yield examples, pool
            rest = examples.take(rest)
            held, count, size = [rest], int(rest.targets.sum()), len(rest)
    if size:
        examples = Examples.concat(held)
        pool, _ = _draw_rows(examples, count, shuffle_buffer > 1, rng)
        yield examples, pool


def _draw_rows(
    examples: Examples, targets: int, shuffle: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(indices of whole rows holding about `targets` targets, indices of the other rows); a
    row's examples are contiguous in `examples`."""
    new_row = np.diff(examples.unit) != 0
    new_row |= np.diff(examples.row) != 0
    starts = np.flatnonzero(np.concatenate([[True], new_row]))
    sizes = np.diff(np.concatenate([starts, [len(examples)]]))
    order = rng.permutation(len(starts)) if shuffle else np.arange(len(starts))
    row_targets = np.add.reduceat(examples.targets, starts)[order]
    cut = min(int(np.searchsorted(np.cumsum(row_targets), targets)) + 1, len(order))

    def spans(rows: np.ndarray) -> np.ndarray:
        owner, index = _ragged(sizes[rows])
        return starts[rows][owner] + index

    return spans(order[:cut]), spans(order[cut:])


def length_grouped(
    examples: Examples, pool: np.ndarray, batch_size: int, rng: np.random.Generator
) -> Iterator[Examples]:
    """The pool's examples sorted by history length (ties keep their order) and cut into
    batches of about `batch_size` targets (an example joins the batch its first target falls
    in), the batches in random order: padding drops while the epoch stays shuffled. Each batch
    is cut to its longest history."""
    pool = pool[np.argsort(examples.length[pool], kind="stable")]
    targets = examples.targets[pool]
    batch = (np.cumsum(targets) - targets) // batch_size
    edges = np.flatnonzero(np.diff(batch)) + 1
    starts, stops = np.concatenate([[0], edges]), np.concatenate([edges, [len(pool)]])
    for index in rng.permutation(len(starts)):
        rows = pool[starts[index] : stops[index]]
        yield examples.take(rows, width=max(int(examples.length[rows[-1]]), 1))


def collated(batch: Examples) -> dict[str, torch.Tensor]:
    """Tensors ready for the device, cut to the batch's longest history: the most recent item
    is always in the last column."""
    width = max(int(batch.length.max()), 1)
    target = batch.target if batch.target.ndim == 1 else batch.target[:, -width:]
    return {
        "user": torch.from_numpy(batch.user),
        "history": torch.from_numpy(np.ascontiguousarray(batch.history[:, -width:])),
        "target": torch.from_numpy(np.ascontiguousarray(target)),
    }


def sources(batch: Examples) -> np.ndarray:
    """[targets, 2]: the (unit, row) of each trained target, for the position tracker."""
    return np.repeat(np.stack([batch.unit, batch.row], axis=1), batch.targets, axis=0)
