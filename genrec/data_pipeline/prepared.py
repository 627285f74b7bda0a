"""Reading a prepared dataset back: the training sequences and the leave-one-out splits."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.preprocess import ragged_gather
from genrec.errors import DataError


@dataclass
class EvalSet:
    """One evaluation example per user: user id, history (CSR) and target item."""

    name: str
    users: np.ndarray
    offsets: np.ndarray
    history: np.ndarray
    targets: np.ndarray

    def take(self, rows: np.ndarray) -> "EvalSet":
        """The given examples, in the order given."""
        starts, stops = self.offsets[rows], self.offsets[rows + 1]
        offsets, history = ragged_gather(self.history, starts, stops)
        return EvalSet(self.name, self.users[rows], offsets, history, self.targets[rows])

    def examples(self) -> list[dict[str, Any]]:
        """The rows as training-style examples (user, history, target)."""
        return [
            {"user": int(u), "history": self.history[a:b], "target": int(t)}
            for u, a, b, t in zip(
                self.users, self.offsets[:-1], self.offsets[1:], self.targets, strict=True
            )
        ]

    def subsample(self, users: int, seed: int | list[int]) -> "EvalSet":
        """A fixed random subset (all of it when users <= 0), order kept."""
        if users <= 0 or users >= self.users.size:
            return self
        rows = np.random.default_rng(seed).choice(self.users.size, users, replace=False)
        return self.take(np.sort(rows))


@dataclass
class PreparedData:
    """A prepared dataset in memory: training sequences (CSR) and the evaluation splits."""

    data_dir: Path
    manifest: dict[str, Any]
    train_offsets: np.ndarray
    train_items: np.ndarray
    valid: EvalSet
    test: EvalSet
    holdout: EvalSet | None  # users kept out of training (data.holdout_users), if any

    @property
    def num_users(self) -> int:
        return int(self.manifest["num_users"])

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    def item_counts(self) -> np.ndarray:
        """Training interactions per item: the popularity baseline's scores."""
        return np.bincount(self.train_items, minlength=self.num_items)


def _csr(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    lists = column.combine_chunks()
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return offsets, pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)


def load_eval_set(data_dir: Path, name: str) -> EvalSet:
    """A split with its examples ordered by history length: metrics are means, so order is
    free, and batches of similar lengths let sequence models cut most of the padding."""
    table = pq.read_table(Path(data_dir) / f"{name}.parquet")
    offsets, history = _csr(table.column("history"))
    order = np.argsort(np.diff(offsets), kind="stable")
    offsets, history = ragged_gather(history, offsets[:-1][order], offsets[1:][order])
    users = table.column("user").to_numpy().astype(np.int64)[order]
    targets = table.column("target").to_numpy().astype(np.int64)[order]
    return EvalSet(name, users, offsets, history, targets)


def load_prepared(data_dir: Path) -> PreparedData:
    """Read a `genrec prepare` output; training = each user's sequence minus its last two."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    table = pq.read_table(data_dir / "sequences.parquet")
    users = table.column("user").to_numpy()
    if not np.array_equal(users, np.arange(manifest["num_users"])):
        raise DataError(str(data_dir / "sequences.parquet"), "rows are not users 0..n-1 in order")
    offsets, items = _csr(table.column("items"))
    train_offsets, train_items = ragged_gather(items, offsets[:-1], offsets[1:] - 2)
    return PreparedData(
        data_dir,
        manifest,
        train_offsets,
        train_items,
        load_eval_set(data_dir, "valid"),
        load_eval_set(data_dir, "test"),
        load_eval_set(data_dir, "holdout") if manifest.get("num_holdout_users") else None,
    )


def latest_histories(data_dir: Path, max_history: int) -> EvalSet:
    """Every user's whole sequence (the test history and target; the held-out users' too),
    its newest `max_history` items, with no target: what a recommendation reads."""
    splits = [load_eval_set(data_dir, "test")]
    if (data_dir / "holdout.parquet").exists():
        splits.append(load_eval_set(data_dir, "holdout"))
    users, offsets, history, shift = [], [np.zeros(1, dtype=np.int64)], [], 0
    for split in splits:
        whole = np.insert(split.history, split.offsets[1:], split.targets)
        users.append(split.users)
        offsets.append(split.offsets[1:] + np.arange(1, split.users.size + 1) + shift)
        history.append(whole)
        shift += whole.size
    offsets_all, history_all = np.concatenate(offsets), np.concatenate(history)
    starts = np.maximum(offsets_all[:-1], offsets_all[1:] - max_history)
    offsets_all, history_all = ragged_gather(history_all, starts, offsets_all[1:])
    users_all = np.concatenate(users)
    targets = np.full(users_all.size, -1, dtype=np.int64)
    latest = EvalSet("latest", users_all, offsets_all, history_all, targets)
    return latest.take(np.argsort(users_all, kind="stable"))
