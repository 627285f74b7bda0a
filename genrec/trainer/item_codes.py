"""Items' semantic IDs as a lookup table: item histories and targets become code tensors."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import Tensor

from genrec.errors import DataError


class ItemCodes:
    """Row i holds item i's L codes and its dedup code."""

    def __init__(self, codes: np.ndarray | Tensor, codebook_size: int):
        self.table = torch.as_tensor(np.asarray(codes), dtype=torch.long)
        self.codebook_size = codebook_size

    @classmethod
    def load(cls, path: Path, num_items: int, codebook_size: int) -> "ItemCodes":
        """Reads a `genrec tokenize` semantic-ID table and checks it covers items 0..n-1."""
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as err:
            raise DataError(str(path), f"cannot read semantic IDs: {err}") from err
        items = table.column("item").to_numpy()
        if not np.array_equal(items, np.arange(num_items)):
            raise DataError(
                str(path), f"rows must be items 0..{num_items - 1} in order (the dataset's items)"
            )
        codes = np.array(table.column("codes").to_pylist(), dtype=np.int64)
        top = codes[:, :-1].max(initial=0)
        if codes.min(initial=0) < 0 or top >= codebook_size:
            raise DataError(str(path), f"codes must lie in [0, {codebook_size}), max is {top}")
        return cls(codes, codebook_size)

    @property
    def num_items(self) -> int:
        return self.table.size(0)

    @property
    def num_levels(self) -> int:
        """Codes per ID without the dedup code."""
        return self.table.size(1) - 1

    @property
    def dedup_size(self) -> int:
        return int(self.table[:, -1].max()) + 1

    def to(self, device: torch.device | str) -> "ItemCodes":
        return ItemCodes(self.table.to(device), self.codebook_size)

    def __call__(self, items: Tensor) -> Tensor:
        """Items [...] (-1 = padding) -> codes [..., L+1] (padding rows all -1)."""
        codes = self.table[items.clamp(min=0)]
        return codes.masked_fill((items < 0)[..., None], -1)
