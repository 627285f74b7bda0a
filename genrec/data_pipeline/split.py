"""Leave-one-out: per user the last item is the test target, the one before it validation."""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from genrec.data_pipeline.preprocess import Sequences, ragged_gather


@dataclass
class EvalSplit:
    """One evaluation example per user: the (truncated) history before a target."""

    users: np.ndarray
    offsets: np.ndarray
    history: np.ndarray
    targets: np.ndarray

    def to_table(self) -> pa.Table:
        return pa.table(
            {
                "user": pa.array(self.users.astype(np.int32)),
                "history": list_array(self.offsets, self.history),
                "target": pa.array(self.targets.astype(np.int32)),
            }
        )


def hold_out_users(seqs: Sequences, share: float, seed: int) -> tuple[Sequences, Sequences]:
    """(trained, held out): a seeded `share` of the users kept out of training, validation and
    test entirely, to be evaluated apart as users the models never saw."""
    held = held_out(seqs.num_users, share, seed)
    return _some_users(seqs, ~held), _some_users(seqs, held)


def held_out(num_users: int, share: float, seed: int) -> np.ndarray:
    """Which of `num_users` users are held out: a seeded `share` of them."""
    held = np.zeros(num_users, dtype=bool)
    count = round(share * num_users)
    held[np.random.default_rng([seed, 11]).choice(num_users, count, replace=False)] = True
    return held


def _some_users(seqs: Sequences, chosen: np.ndarray) -> Sequences:
    rows = np.flatnonzero(chosen)
    offsets, items = ragged_gather(seqs.items, seqs.offsets[:-1][rows], seqs.offsets[1:][rows])
    return Sequences(offsets, items, seqs.user_ids.take(pa.array(rows)), seqs.item_ids)


def list_array(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    if offsets[-1] < 2**31:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))


def eval_split(
    offsets: np.ndarray, items: np.ndarray, holdout: int, max_history: int, first_user: int = 0
) -> EvalSplit:
    """Target = the item `holdout` positions from the end; history = up to max_history before it.

    The sequences are CSR (`offsets`, `items`) of consecutive users from `first_user`.
    """
    stops = offsets[1:] - holdout
    starts = np.maximum(offsets[:-1], stops - max_history)
    history_offsets, history = ragged_gather(items, starts, stops)
    users = np.arange(first_user, first_user + offsets.size - 1)
    return EvalSplit(users, history_offsets, history, items[stops])


def train_sequences(seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """Each user's full training sequence (everything before the validation target), CSR."""
    return ragged_gather(seqs.items, seqs.offsets[:-1], seqs.offsets[1:] - 2)


def num_prefix_examples(train_offsets: np.ndarray) -> int:
    """Every prefix of a training sequence predicts its next item: len - 1 examples per user."""
    return int(np.maximum(np.diff(train_offsets) - 1, 0).sum())
