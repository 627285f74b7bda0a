"""LC-Rec JSON: `X.inter.json` maps user -> item ids in time order, `X.item.json` id -> metadata."""

import numpy as np
import pyarrow as pa

from genrec.data_pipeline.config import BadRows, DataConfig
from genrec.data_pipeline.raw_log import RawLog
from genrec.data_pipeline.readers.files import existing_file, item_file, load_json
from genrec.data_pipeline.readers.ids import align_ids, parse_ids
from genrec.data_pipeline.readers.item_text import table_from_records
from genrec.errors import DataError


def read_lcrec(cfg: DataConfig) -> RawLog:
    path = existing_file(cfg.interactions)
    source = str(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(source, "expected a JSON object mapping user id to a list of item ids")
    users, sequences, skipped = [], [], 0
    for user, seq in data.items():
        items = np.asarray(seq) if isinstance(seq, list) else None
        if items is None or items.ndim != 1 or len(items) == 0 or items.dtype.kind not in "iu":
            if cfg.on_bad_rows is BadRows.skip:
                skipped += 1
                continue
            raise DataError(
                source,
                f"user '{user}': expected a non-empty list of integer item ids, got {seq!r:.80}",
            )
        users.append(user)
        sequences.append(items)
    if not sequences:
        raise DataError(source, "no users with interactions")
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    user_ids = parse_ids(
        pa.array(users), cfg.id_type, source, lambda i: f"user key #{i + 1}", "user id"
    )
    log_items = pa.array(np.concatenate(sequences).astype(np.int64))
    sources = [source]
    table = None
    item_path = item_file(cfg)
    if item_path is not None:
        meta = load_json(item_path)
        if not isinstance(meta, dict):
            raise DataError(str(item_path), "expected a JSON object mapping item id to metadata")
        table = table_from_records(
            ((k, v if isinstance(v, dict) else {}) for k, v in meta.items()),
            cfg.text_columns,
            str(item_path),
        )
        table = table.set_column(
            0,
            "item_id",
            align_ids(table["item_id"].combine_chunks(), log_items, str(item_path), "item key"),
        )
        sources.append(str(item_path))
    return RawLog(
        users=user_ids.take(pa.array(np.repeat(np.arange(len(users)), lengths))),
        items=log_items,
        times=None,
        item_table=table,
        sources=sources,
        skipped_rows=skipped,
    )
