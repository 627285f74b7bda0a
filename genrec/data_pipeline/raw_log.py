"""The one shape every reader returns, so preprocessing never knows which format it came from."""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass
class RawLog:
    """Interactions with raw ids (int64 or string arrays), one entry per interaction.

    `times` orders a user's interactions; None means the rows are already in time order per user.
    `item_table` has a column `item_id` (raw ids, the type of `items`) and text columns.
    """

    users: pa.Array
    items: pa.Array
    times: np.ndarray | None
    item_table: pa.Table | None
    sources: list[str]
    skipped_rows: int = 0

    def __post_init__(self) -> None:
        if len(self.users) != len(self.items):
            raise ValueError("users and items must have one entry per interaction")
