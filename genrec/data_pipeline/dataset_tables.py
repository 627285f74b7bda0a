"""The tables a prepared dataset holds beside its sequences, and what an engine reports of
what it wrote: shared by the one-process prepare and the one on Ray."""

import logging
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.data_pipeline.preprocess import FilterStats

log = logging.getLogger(__name__)


def item_text_table(item_ids: pa.Array, meta: pa.Table | None) -> tuple[pa.Table, list[str], int]:
    """Items with contiguous ids, raw ids and their text ("" where the metadata has none), the
    text columns and how many items have any text."""
    table = pa.table(
        {"item": pa.array(np.arange(len(item_ids), dtype=np.int32)), "raw_id": item_ids}
    )
    if meta is None:
        return table, [], 0
    index = pc.index_in(item_ids, value_set=meta["item_id"].combine_chunks())
    columns = [c for c in meta.column_names if c != "item_id"]
    for column in columns:
        table = table.append_column(column, pc.fill_null(meta[column].take(index), ""))
    return table, columns, _items_with_text(table, columns)


def _items_with_text(table: pa.Table, columns: list[str]) -> int:
    """Items with a non-blank value in some text column."""
    blank = [pc.equal(pc.utf8_trim_whitespace(table[column]), "") for column in columns]
    return int(pc.sum(pc.invert(reduce(pc.and_, blank))).as_py() or 0) if columns else 0


def write_parquet(table: pa.Table, path: Path) -> None:
    """Id lists barely compress by dictionary, and trying costs a second at 10^7 interactions."""
    pq.write_table(table, path, use_dictionary=False)


@dataclass
class Prepared:
    """What an engine wrote into the dataset folder, as the manifest records it."""

    num_users: int
    num_items: int
    num_interactions: int
    train_examples: int
    eval_counts: dict[str, int]
    text_columns: list[str]
    items_with_text: int
    stats: FilterStats
    skipped_rows: int
    shards: list[dict]


def write_item_and_user_tables(
    out: Path, user_ids: pa.Array, item_ids: pa.Array, meta: pa.Table | None
) -> tuple[list[str], int]:
    """users.parquet (ids in order: trained users, then held out) and items.parquet."""
    users = pa.table(
        {"user": pa.array(np.arange(len(user_ids), dtype=np.int32)), "raw_id": user_ids}
    )
    pq.write_table(users, out / "users.parquet")
    items, text_columns, with_text = item_text_table(item_ids, meta)
    pq.write_table(items, out / "items.parquet")
    return text_columns, with_text


def log_filtered(users: int, items: int, interactions: int, stats: FilterStats) -> None:
    log.info(
        "prepare: %d users, %d items, %d interactions after %d-round k-core (read %d)",
        users,
        items,
        interactions,
        stats.rounds,
        stats.raw_interactions,
    )
