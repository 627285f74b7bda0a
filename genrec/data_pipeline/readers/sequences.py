"""S3Rec/SASRec text: one line per user, `user item item ...` in time order, plus an item table."""

from itertools import chain

import numpy as np
import pyarrow as pa

from genrec.data_pipeline.config import BadRows, DataConfig
from genrec.data_pipeline.raw_log import RawLog
from genrec.data_pipeline.readers.files import existing_file, open_text
from genrec.data_pipeline.readers.ids import parse_ids
from genrec.data_pipeline.readers.item_text import optional_item_table
from genrec.errors import DataError


def read_sequences(cfg: DataConfig) -> RawLog:
    path = existing_file(cfg.interactions)
    source = str(path)
    with open_text(path) as f:
        lines = f.read().split("\n")
    rows = [line.split() for line in lines]
    line_numbers = np.fromiter((i for i, r in enumerate(rows) if r), dtype=np.int64) + 1
    rows = [r for r in rows if r]
    if not rows:
        raise DataError(source, "no sequences (only blank lines)")
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)) - 1
    skipped = 0
    if (lengths == 0).any():
        if cfg.on_bad_rows is not BadRows.skip:
            bad = int(np.flatnonzero(lengths == 0)[0])
            raise DataError(source, f"line {line_numbers[bad]}: user '{rows[bad][0]}' has no items")
        keep = np.flatnonzero(lengths > 0)
        skipped = len(rows) - len(keep)
        rows, lengths, line_numbers = [rows[i] for i in keep], lengths[keep], line_numbers[keep]
    tokens = pa.array(list(chain.from_iterable(rows)))
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    is_user = np.zeros(len(tokens), dtype=bool)
    is_user[starts] = True
    token_line = np.repeat(line_numbers, lengths + 1)

    def where(i: int) -> str:
        return f"line {token_line[i]}"

    ids = parse_ids(tokens, cfg.id_type, source, where)
    users = ids.filter(pa.array(is_user)).take(pa.array(np.repeat(np.arange(len(rows)), lengths)))
    items = ids.filter(pa.array(~is_user))
    table = optional_item_table(cfg.items, cfg.item_id_column, cfg.text_columns, items)
    return RawLog(
        users=users,
        items=items,
        times=None,
        item_table=table,
        sources=[source, *([cfg.items] if cfg.items else [])],
        skipped_rows=skipped,
    )
