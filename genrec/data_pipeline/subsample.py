"""A seeded subset of the training users (`trainer.data_fraction`), for data-scaling studies.

Whether a user trains is a hash of (seed, user) below the fraction: any worker, order or
restart decides alike, nothing is stored, and the users of a smaller fraction are a subset of
a larger one's, so a data axis grows by adding users. Validation and test keep every user.
"""

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.data_pipeline.hashing import GOLDEN, mixed, unit_floats
from genrec.data_pipeline.prepare import load_manifest


def kept_users(users: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Bool mask: which of `users` train at this data fraction."""
    users = np.asarray(users, dtype=np.int64)
    if fraction >= 1:
        return np.ones(users.shape, dtype=bool)
    with np.errstate(over="ignore"):
        key = mixed(np.uint64(seed) * GOLDEN + np.uint64(1))
        uniform = unit_floats(mixed(users.astype(np.uint64) ^ key))
    return uniform < fraction


def train_examples(data_dir: str | Path, fraction: float, seed: int) -> int:
    """Training targets per epoch of the kept users: each user's training sequence (all but
    its last two items) trains every item after its first. With every user kept, the
    manifest's count, so no rank reads the sequences for it."""
    if fraction >= 1:
        return int(load_manifest(data_dir)["num_train_examples"])
    table = pq.read_table(Path(data_dir) / "sequences.parquet", columns=["user", "items"])
    lengths = pc.list_value_length(table.column("items")).to_numpy(zero_copy_only=False)
    kept = kept_users(table.column("user").to_numpy(), fraction, seed)
    return int(np.maximum(lengths[kept] - 3, 0).sum())
