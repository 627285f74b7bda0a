"""Interaction logs as CSV/TSV/Parquet/JSON lines with user, item and timestamp columns: one
file, or many (a folder or a glob) read one by one and joined in name order."""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import reduce
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from genrec.data_pipeline.config import BadRows, DataConfig
from genrec.data_pipeline.raw_log import RawLog
from genrec.data_pipeline.readers.files import log_files, log_kind, open_text
from genrec.data_pipeline.readers.ids import parse_ids
from genrec.data_pipeline.readers.item_text import optional_item_table
from genrec.errors import DataError

DELIMITERS = {".csv": ",", ".tsv": "\t"}


def _read_delimited(
    path: Path,
    delimiter: str,
    skip_bad: bool,
    names: Sequence[str] | None,
    content: bytes | None = None,
) -> tuple[pa.Table, int, int]:
    """Parse with pyarrow; returns the table, the rows skipped and the line of row 0."""
    bad_rows: list[str] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_rows.append(
            f"line {row.number}: expected {row.expected_columns} columns, got {row.actual_columns}"
            if row.number is not None
            else f"row {row.text!r:.80}: wrong number of columns"
        )
        return "skip" if skip_bad else "error"

    parse = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)

    def read(use_threads: bool) -> pa.Table:
        bad_rows.clear()
        options = pacsv.ReadOptions(
            column_names=list(names) if names else None, use_threads=use_threads
        )
        source = path if content is None else pa.BufferReader(content)
        return pacsv.read_csv(source, read_options=options, parse_options=parse)

    try:
        try:
            table = read(use_threads=True)
        except pa.ArrowInvalid:
            if not bad_rows:
                raise
            table = read(use_threads=False)  # only a single-threaded parse knows line numbers
    except pa.ArrowInvalid as err:
        raise DataError(str(path), bad_rows[-1] if bad_rows else f"cannot parse: {err}") from err
    return table, len(bad_rows), 1 if names else 2


def read_columns(
    path: Path,
    columns: Sequence[str],
    on_bad_rows: BadRows,
    names: Sequence[str] | None = None,
    delimiter: str | None = None,
    content: bytes | None = None,
) -> tuple[pa.Table, int, int]:
    """The named columns of a log file, rows with a missing value counted as bad rows.

    `content` is delimited text to parse instead of the file (say, rewritten from another
    separator); `path` then only names the source. Returns the table, the number of rows
    skipped and the file line of the table's row 0.
    """
    source = str(path)
    skip_bad = on_bad_rows is BadRows.skip
    kind = log_kind(path)
    if kind == ".parquet":
        table, skipped, first_line = pq.read_table(path), 0, 0
    elif kind == ".jsonl" and delimiter is None:
        table, skipped, first_line = _read_json_lines(path), 0, 1
    else:
        sep = delimiter or DELIMITERS.get(kind)
        if sep is None:
            raise DataError(source, "unknown log file type; use .csv, .tsv, .parquet or .jsonl")
        table, skipped, first_line = _read_delimited(path, sep, skip_bad, names, content)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(source, f"missing column(s) {missing}; columns are {table.column_names}")
    table = table.select(list(columns))
    if table.num_rows == 0:
        raise DataError(source, "no rows")
    valid = reduce(pc.and_, (pc.is_valid(table[c]) for c in columns))
    if not pc.all(valid).as_py():
        if not skip_bad:
            row = pc.index(valid, False).as_py()
            empty = [c for c in columns if not table[c][row].is_valid]
            raise DataError(
                source, f"{_row_name(row, first_line)}: empty value in column(s) {empty}"
            )
        skipped += table.num_rows - pc.sum(valid).as_py()
        table = table.filter(valid)
    return table, skipped, first_line


def _read_json_lines(path: Path) -> pa.Table:
    """One JSON object a line; on a parse error, the first bad line is found and named."""
    try:
        return pajson.read_json(path)
    except pa.ArrowInvalid as err:
        with open_text(path) as f:
            for number, line in enumerate(f, 1):
                try:
                    if not isinstance(json.loads(line), dict):
                        raise DataError(str(path), f"line {number}: not a JSON object")
                except json.JSONDecodeError as bad:
                    raise DataError(str(path), f"line {number}: invalid JSON ({bad.msg})") from err
        raise DataError(str(path), f"cannot parse: {err}") from err


def _row_name(row: int, first_line: int) -> str:
    return f"line {row + first_line}" if first_line else f"row {row}"


def order_key(
    values: pa.ChunkedArray | pa.Array, source: str, column: str, where: Callable[[int], str]
) -> np.ndarray:
    """Timestamps as int64 (numbers, or dates parsed by pyarrow) for ordering; a value that is
    neither stops with an error naming its row (`where(i)` names row i)."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
        return pc.cast(pc.cast(values, pa.timestamp("s")), pa.int64()).to_numpy()
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return values.to_numpy().astype(
            np.int64 if pa.types.is_integer(values.type) else np.float64
        )
    texts = values.to_pylist()
    row = next((i for i, text in enumerate(texts) if not _is_time(text)), None)
    if row is None:
        raise DataError(source, f"column '{column}' holds {values.type}, not numbers or timestamps")
    raise DataError(
        source, f"{where(row)}: column '{column}' holds {texts[row]!r}, not a number or a date"
    )


def _is_time(text: object) -> bool:
    """A number or an ISO date: what the readers accept as a timestamp."""
    try:
        float(str(text))
        return True
    except ValueError:
        pass
    try:
        datetime.fromisoformat(str(text))
        return True
    except ValueError:
        return False


@dataclass
class LogPart:
    """One log file's interactions: raw ids typed per `data.id_type`, the order key and the
    rows skipped as malformed."""

    users: pa.Array
    items: pa.Array
    times: np.ndarray
    skipped: int


def read_log_part(path: Path, cfg: DataConfig) -> LogPart:
    """A log file's user, item and time columns, every bad value named by file and line."""
    source = str(path)
    columns = [cfg.user_column, cfg.item_column, cfg.time_column]
    table, skipped, first_line = read_columns(path, columns, cfg.on_bad_rows)

    def where(i: int) -> str:
        return _row_name(i, first_line)

    def ids(column: str, what: str) -> pa.Array:
        return parse_ids(table[column].combine_chunks(), cfg.id_type, source, where, what)

    times = order_key(table[cfg.time_column], source, cfg.time_column, where)
    return LogPart(ids(cfg.user_column, "user id"), ids(cfg.item_column, "item id"), times, skipped)


def common_ids(arrays: Sequence[pa.Array]) -> list[pa.Array]:
    """Ids of several files as one type: int64 where every file's are integers, else strings
    (what one file holding all the rows would have been read as)."""
    if all(pa.types.is_integer(a.type) for a in arrays):
        return list(arrays)
    return [pc.cast(a, pa.string()) for a in arrays]


def common_times(times: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Order keys of several files as one dtype: float64 if any file's are fractional."""
    if all(t.dtype == np.int64 for t in times):
        return list(times)
    return [t.astype(np.float64) for t in times]


def read_log(cfg: DataConfig) -> RawLog:
    files = log_files(cfg.interactions)
    parts = [read_log_part(path, cfg) for path in files]
    users = pa.concat_arrays(common_ids([p.users for p in parts]))
    items = pa.concat_arrays(common_ids([p.items for p in parts]))
    times = np.concatenate(common_times([p.times for p in parts]))
    table = optional_item_table(cfg.items, cfg.item_id_column, cfg.text_columns, items)
    return RawLog(
        users=users,
        items=items,
        times=times,
        item_table=table,
        sources=[*map(str, files), *([cfg.items] if cfg.items else [])],
        skipped_rows=sum(p.skipped for p in parts),
    )
