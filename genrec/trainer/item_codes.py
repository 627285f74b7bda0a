"""Items' semantic IDs as lookup tables: item histories and targets become code tensors.

A method may give every item several IDs, one per tokenizer (MTGRec's adjacent-epoch
checkpoints; ETEGRec's codes as they change): a stack of G tables over the same items. Each
example carries the group it is read in; group 0 is the table evaluation decodes.
"""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import Tensor

from genrec.errors import DataError


def read_table(path: Path, num_items: int, codebook_size: int, column: str = "item") -> np.ndarray:
    """A `genrec tokenize` semantic-ID table, checked to cover items (or, with `column` "user",
    users) 0..n-1 with valid codes."""
    try:
        table = pq.read_table(path)
        items = table.column(column).to_numpy()
    except (OSError, ValueError, KeyError) as err:
        raise DataError(str(path), f"cannot read semantic IDs: {err}") from err
    if not np.array_equal(items, np.arange(num_items)):
        raise DataError(
            str(path),
            f"rows must be {column}s 0..{num_items - 1} in order (the dataset's {column}s)",
        )
    codes = np.array(table.column("codes").to_pylist(), dtype=np.int64)
    top = codes[:, :-1].max(initial=0)
    if codes.min(initial=0) < 0 or top >= codebook_size:
        raise DataError(str(path), f"codes must lie in [0, {codebook_size}), max is {top}")
    return codes


class ItemCodes:
    """`table[g, i]` holds item i's L codes and its dedup code under tokenizer g."""

    def __init__(self, tables: np.ndarray | Tensor, codebook_size: int):
        table = torch.as_tensor(np.asarray(tables), dtype=torch.long)
        self.table = table[None] if table.dim() == 2 else table
        self.codebook_size = codebook_size

    @classmethod
    def load(cls, paths: list[Path], num_items: int, codebook_size: int) -> "ItemCodes":
        """One group per table; all must give IDs of the same length."""
        tables = [read_table(path, num_items, codebook_size) for path in paths]
        for path, table in zip(paths, tables, strict=True):
            if table.shape != tables[0].shape:
                raise DataError(
                    str(path),
                    f"IDs of {table.shape[1]} codes, where {paths[0]} has {tables[0].shape[1]}",
                )
        return cls(np.stack(tables), codebook_size)

    @property
    def num_groups(self) -> int:
        return self.table.size(0)

    @property
    def num_items(self) -> int:
        return self.table.size(1)

    @property
    def num_levels(self) -> int:
        """Codes per ID without the dedup code."""
        return self.table.size(2) - 1

    @property
    def dedup_size(self) -> int:
        return int(self.table[..., -1].max()) + 1

    def group(self, g: int = 0) -> Tensor:
        """Every item's ID in group g: [num_items, L+1]."""
        return self.table[g]

    def to(self, device: torch.device | str) -> "ItemCodes":
        return ItemCodes(self.table.to(device), self.codebook_size)

    def __call__(self, items: Tensor, group: Tensor | None = None) -> Tensor:
        """Items [B, ...] (-1 = padding) read in groups [B] (None: group 0) -> codes
        [B, ..., L+1], padding rows all -1."""
        index = items.clamp(min=0)
        if group is None or self.num_groups == 1:
            codes = self.table[0][index]
        else:
            codes = self.table[group.view(-1, *[1] * (items.dim() - 1)), index]
        return codes.masked_fill((items < 0)[..., None], -1)
