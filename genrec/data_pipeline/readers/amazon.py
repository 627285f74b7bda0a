"""Amazon review dumps (2014, 2018 and 2023 releases): JSON lines, plain or gzipped.

Reviews give (reviewer, product, review time); the optional metadata dump gives each product a
title, description, brand and categories. The release is told apart by the first review's keys.
"""

import ast
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from genrec.data_pipeline.config import BadRows, DataConfig, IdType
from genrec.data_pipeline.raw_log import RawLog
from genrec.data_pipeline.readers.files import existing_file, open_text
from genrec.data_pipeline.readers.ids import align_ids, parse_ids
from genrec.data_pipeline.readers.item_text import table_from_records
from genrec.data_pipeline.readers.tabular_log import order_key
from genrec.errors import DataError

T = TypeVar("T")


@dataclass(frozen=True)
class ReviewSchema:
    """A release's review fields; the item id is the first of `items` that a review has."""

    user: str
    items: tuple[str, ...]
    time: str


SCHEMAS = (
    ReviewSchema("reviewerID", ("asin",), "unixReviewTime"),
    ReviewSchema("user_id", ("parent_asin", "asin"), "timestamp"),
)
PRODUCT_ID = ("parent_asin", "asin")


@dataclass
class Reviews:
    """Columns user, item, time; `where(i)` names the line of row i for error messages."""

    table: pa.Table
    where: Callable[[int], str]
    skipped: int


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines; a bad gzip stream or non-UTF-8 text becomes a DataError."""
    try:
        with open_text(path) as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield number, line
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise DataError(str(path), f"cannot read: {err}") from err


def _parse_object(line: str, loose: bool = False) -> dict[str, Any]:
    """A JSON object, or with `loose` also a Python dict literal (the 2014 metadata)."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        if not loose:
            raise ValueError(f"invalid JSON ({err.msg}, column {err.colno})") from err
        try:
            value = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError) as literal_err:
            raise ValueError("neither JSON nor a Python dict literal") from literal_err
    if not isinstance(value, dict):
        raise ValueError(f"expected an object, got {type(value).__name__}")
    return value


def _parse_lines(
    path: Path, parse: Callable[[str], T], on_bad_rows: BadRows
) -> tuple[list[tuple[int, T]], int]:
    """Each non-blank line parsed with its number; a failing line raises or, under skip, counts."""
    parsed, skipped = [], 0
    for number, line in _lines(path):
        try:
            parsed.append((number, parse(line)))
        except ValueError as err:
            if on_bad_rows is not BadRows.skip:
                raise DataError(str(path), f"line {number}: {err}") from err
            skipped += 1
    if not parsed:
        raise DataError(str(path), "no usable records")
    return parsed, skipped


def _id_field(record: dict[str, Any], names: tuple[str, ...]) -> str:
    for name in names:
        value = record.get(name)
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if value is not None:
            raise ValueError(f"'{name}' is {type(value).__name__}, not an id")
    raise ValueError(f"missing '{names[0]}'")


def _detect_schema(path: Path, on_bad_rows: BadRows) -> ReviewSchema:
    for number, line in _lines(path):
        try:
            keys = _parse_object(line).keys()
        except ValueError as err:
            if on_bad_rows is BadRows.skip:
                continue
            raise DataError(str(path), f"line {number}: {err}") from err
        for schema in SCHEMAS:
            if schema.user in keys:
                return schema
        names = " or ".join(f"'{s.user}'" for s in SCHEMAS)
        raise DataError(str(path), f"line {number}: no {names} field; not an Amazon review dump")
    raise DataError(str(path), "no readable reviews")


def _read_fast(path: Path, schema: ReviewSchema) -> Reviews | None:
    """Every review through pyarrow, or None when some line needs the line-by-line scan."""
    fields = [pa.field(name, pa.string()) for name in (schema.user, *schema.items)]
    fields.append(pa.field(schema.time, pa.int64()))
    parse = pajson.ParseOptions(
        explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore"
    )
    try:
        raw = pajson.read_json(path, parse_options=parse)
    except pa.ArrowException:
        return None
    items = pc.coalesce(*(raw[name] for name in schema.items))
    table = pa.table({"user": raw[schema.user], "item": items, "time": raw[schema.time]})
    if table.num_rows == 0 or any(table[c].null_count for c in table.column_names):
        return None

    def where(i: int) -> str:
        return f"line {next(islice(_lines(path), i, None))[0]}"

    return Reviews(table, where, 0)


def _review(schema: ReviewSchema) -> Callable[[str], tuple[str, str, int]]:
    def parse(line: str) -> tuple[str, str, int]:
        review = _parse_object(line)
        time = review.get(schema.time)
        if not isinstance(time, int) or isinstance(time, bool):
            raise ValueError(f"'{schema.time}' is missing or not an integer")
        return _id_field(review, (schema.user,)), _id_field(review, schema.items), time

    return parse


def _scan(path: Path, schema: ReviewSchema, on_bad_rows: BadRows) -> Reviews:
    """Line by line, so a bad review is named by its line or skipped."""
    parsed, skipped = _parse_lines(path, _review(schema), on_bad_rows)
    numbers = np.fromiter((number for number, _ in parsed), dtype=np.int64, count=len(parsed))
    users, items, times = zip(*(review for _, review in parsed), strict=True)
    table = pa.table(
        {
            "user": pa.array(users, pa.string()),
            "item": pa.array(items, pa.string()),
            "time": pa.array(times, pa.int64()),
        }
    )
    return Reviews(table, lambda i: f"line {numbers[i]}", skipped)


def _leaves(value: Any) -> list[str]:
    """Nested category lists flattened without repeats: 2014 lists every path from the root."""
    if isinstance(value, list | tuple):
        return list(dict.fromkeys(leaf for v in value for leaf in _leaves(v)))
    return [] if value is None else [str(value)]


def _product(line: str) -> tuple[str, dict[str, Any]]:
    """(item id, metadata) with the canonical text fields named the same in every release."""
    record = _parse_object(line, loose=True)
    text = {
        "title": record.get("title"),
        "description": record.get("description"),
        "brand": record.get("brand") or record.get("store"),
        "categories": _leaves(record.get("categories") or record.get("category")),
    }
    return _id_field(record, PRODUCT_ID), {**record, **{k: v for k, v in text.items() if v}}


def _item_table(path: Path, cfg: DataConfig, log_items: pa.Array) -> tuple[pa.Table, int]:
    parsed, skipped = _parse_lines(path, _product, cfg.on_bad_rows)
    table = table_from_records((product for _, product in parsed), cfg.text_columns, str(path))
    ids = align_ids(table["item_id"].combine_chunks(), log_items, str(path), "asin")
    return table.set_column(0, "item_id", ids), skipped


def read_amazon(cfg: DataConfig) -> RawLog:
    path = existing_file(cfg.interactions)
    source = str(path)
    schema = _detect_schema(path, cfg.on_bad_rows)
    reviews = _read_fast(path, schema) or _scan(path, schema, cfg.on_bad_rows)
    id_type = IdType.str if cfg.id_type is IdType.auto else cfg.id_type
    table = reviews.table
    users = parse_ids(table["user"].combine_chunks(), id_type, source, reviews.where, "user id")
    items = parse_ids(table["item"].combine_chunks(), id_type, source, reviews.where, "item id")
    times = order_key(table["time"], source, schema.time, reviews.where)
    sources, item_table, skipped = [source], None, reviews.skipped
    if cfg.items:
        item_table, skipped_products = _item_table(existing_file(cfg.items), cfg, items)
        skipped += skipped_products
        sources.append(cfg.items)
    return RawLog(
        users=users,
        items=items,
        times=times,
        item_table=item_table,
        sources=sources,
        skipped_rows=skipped,
    )
