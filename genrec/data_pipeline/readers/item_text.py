"""Item metadata as one table: a raw `item_id` column and plain-text columns.

Metadata comes as JSON records (LC-Rec, Amazon) or as a TSV/CSV/Parquet table; values may be
lists (categories) or carry HTML entities, and all of them end up as clean strings.
"""

import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genrec.data_pipeline.readers.files import existing_file
from genrec.data_pipeline.readers.ids import align_ids
from genrec.errors import DataError

TEXT_FIELDS = ("title", "description", "brand", "categories")


def text_value(value: Any) -> str:
    """Flatten nested lists ("a, b") and unescape HTML entities."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        parts = (text_value(v) for v in value)
        return ", ".join(p for p in parts if p)
    return " ".join(html.unescape(str(value)).split())


def choose_text_columns(
    available: Sequence[str], requested: Sequence[str], source: str
) -> list[str]:
    """The requested columns (all must exist), or by default the usual metadata fields present."""
    if requested:
        missing = [c for c in requested if c not in available]
        if missing:
            raise DataError(
                source, f"text column(s) {missing} not found; columns are {list(available)}"
            )
        return list(requested)
    return [c for c in TEXT_FIELDS if c in available]


def table_from_records(
    records: Iterable[tuple[Any, dict[str, Any]]], requested: Sequence[str], source: str
) -> pa.Table:
    """Build the item table from (raw id, metadata dict) pairs."""
    records = list(records)
    seen = {k for _, meta in records for k in meta}
    columns = choose_text_columns(sorted(seen, key=_field_order), requested, source)
    data = {"item_id": [item for item, _ in records]}
    for column in columns:
        data[column] = [text_value(meta.get(column)) for _, meta in records]
    return pa.table(data)


def _field_order(name: str) -> tuple[int, str]:
    return (TEXT_FIELDS.index(name) if name in TEXT_FIELDS else len(TEXT_FIELDS), name)


def read_table_file(path: Path) -> pa.Table:
    """Read a TSV/CSV/Parquet file with every column as text unless Parquet says otherwise."""
    if path.suffix in (".parquet", ".pq"):
        return pq.read_table(path)
    delimiter = "\t" if path.suffix in (".tsv", ".tab") else ","
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=False if delimiter == "\t" else '"')
    try:
        return pacsv.read_csv(path, parse_options=parse)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(str(path), f"cannot parse as a delimited table: {err}") from err


def read_item_table(path: Path, id_column: str | None, requested: Sequence[str]) -> pa.Table:
    """An item table file: `id_column` (default: the first column) plus text columns."""
    table = read_table_file(path)
    source = str(path)
    if table.num_rows == 0:
        raise DataError(source, "item table is empty")
    id_column = id_column or table.column_names[0]
    if id_column not in table.column_names:
        raise DataError(
            source, f"id column '{id_column}' not found; columns are {table.column_names}"
        )
    others = [c for c in table.column_names if c != id_column]
    columns = choose_text_columns(others, requested, source)
    if not columns:
        raise DataError(
            source,
            f"no text columns among {others}; name them with data.text_columns=[...]",
        )
    data = {"item_id": table.column(id_column).combine_chunks()}
    for column in columns:
        values = pc.cast(table.column(column), pa.string()).to_pylist()
        if column == "categories":
            values = [v.split("|") if v else v for v in values]
        data[column] = [text_value(v) for v in values]
    return pa.table(data)


def optional_item_table(
    path: str | None, id_column: str | None, requested: Sequence[str], log_items: pa.Array
) -> pa.Table | None:
    """`data.items` read as an item table whose ids have the log's id type, or None."""
    if not path:
        return None
    table = read_item_table(existing_file(path), id_column, requested)
    ids = align_ids(table["item_id"].combine_chunks(), log_items, path, id_column or "first")
    return table.set_column(0, "item_id", ids)
