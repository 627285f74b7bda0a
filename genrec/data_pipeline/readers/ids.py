"""Raw-id parsing shared by the readers: integer ids stay integers, anything else stays a string."""

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from genrec.data_pipeline.config import IdType
from genrec.errors import DataError

_INTEGER = r"^\s*[+-]?\d+\s*$"


def looks_integer(values: pa.Array) -> bool:
    if pa.types.is_integer(values.type):
        return True
    if len(values) == 0 or (
        not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type)
    ):
        return False
    return bool(pc.all(pc.match_substring_regex(values, _INTEGER)).as_py())


def parse_ids(
    values: pa.Array,
    id_type: IdType,
    source: str,
    where: Callable[[int], str],
    what: str = "id",
) -> pa.Array:
    """Cast raw ids to int64 (`int`), string (`str`), or whichever fits all of them (`auto`).

    `where(i)` names the row of entry i in an error message.
    """
    if id_type is IdType.auto:
        id_type = IdType.int if looks_integer(values) else IdType.str
    if id_type is IdType.str:
        return values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    if pa.types.is_integer(values.type):
        return pc.cast(values, pa.int64())
    if pa.types.is_floating(values.type):
        whole = pc.equal(values, pc.floor(values))
        if pc.all(whole).as_py():
            return pc.cast(values, pa.int64())
        bad = pc.index(whole, False).as_py()
        raise DataError(source, f"{where(bad)}: non-integer {what} {values[bad].as_py()!r}")
    ok = pc.match_substring_regex(values, _INTEGER)
    if not pc.all(ok).as_py():
        bad = pc.index(ok, False).as_py()
        raise DataError(source, f"{where(bad)}: non-numeric {what} {values[bad].as_py()!r}")
    return pc.cast(pc.utf8_trim_whitespace(values), pa.int64())


def align_ids(table_ids: pa.Array, log_ids: pa.Array, source: str, column: str) -> pa.Array:
    """Give an item table's id column the type of the interaction log's item ids."""
    if pa.types.is_integer(log_ids.type):
        return parse_ids(
            table_ids, IdType.int, source, lambda i: f"row {i + 1} of column '{column}'", "item id"
        )
    return pc.cast(table_ids, pa.string())
