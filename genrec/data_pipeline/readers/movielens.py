"""MovieLens ratings: ML-1M style `ratings.dat` (`::`-separated) or ML-latest style `ratings.csv`.

Items come from `data.items` or the `movies.dat` / `movies.csv` next to the ratings: a title
and `|`-separated genres per movie. Every id is an integer.
"""

from pathlib import Path
from typing import Any

import pyarrow as pa

from genrec.data_pipeline.config import BadRows, DataConfig, IdType
from genrec.data_pipeline.raw_log import RawLog
from genrec.data_pipeline.readers.files import existing_file, item_file
from genrec.data_pipeline.readers.ids import align_ids, parse_ids
from genrec.data_pipeline.readers.item_text import table_from_records
from genrec.data_pipeline.readers.tabular_log import order_key, read_columns
from genrec.errors import DataError

RATINGS_DAT = ("user_id", "item_id", "rating", "timestamp")
RATINGS_CSV = ("userId", "movieId", "timestamp")
MOVIES_CSV = ("movieId", "title", "genres")
NO_GENRES = "(no genres listed)"


def _read_ratings(path: Path, on_bad_rows: BadRows) -> tuple[pa.Table, int, int]:
    """User, item and time columns (in that order), rows skipped and the line of row 0."""
    if path.suffix == ".dat":
        content = path.read_bytes().replace(b"::", b"\t")
        columns = [RATINGS_DAT[0], RATINGS_DAT[1], RATINGS_DAT[3]]
        return read_columns(path, columns, on_bad_rows, RATINGS_DAT, "\t", content)
    if path.suffix == ".csv":
        return read_columns(path, RATINGS_CSV, on_bad_rows)
    raise DataError(str(path), "expected MovieLens ratings.dat or ratings.csv")


def _decode(data: bytes) -> str:
    """ML-1M files are latin-1; later `.dat` releases are UTF-8, which latin-1 would garble."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _movies_dat(path: Path, on_bad_rows: BadRows) -> tuple[list[tuple[Any, dict[str, Any]]], int]:
    """`MovieID::Title::Genres` lines, split by hand: titles may hold quotes a CSV parser eats."""
    source, records, skipped = str(path), [], 0
    for number, line in enumerate(_decode(path.read_bytes()).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 3:
            if on_bad_rows is BadRows.skip:
                skipped += 1
                continue
            raise DataError(
                source, f"line {number}: expected MovieID::Title::Genres, got {line!r:.80}"
            )
        records.append((fields[0].strip(), _movie(fields[1], fields[2])))
    return records, skipped


def _movies_csv(path: Path, on_bad_rows: BadRows) -> tuple[list[tuple[Any, dict[str, Any]]], int]:
    table, skipped, _ = read_columns(path, MOVIES_CSV, on_bad_rows)
    rows = zip(*(table[c].to_pylist() for c in MOVIES_CSV), strict=True)
    return [(movie, _movie(title, genres)) for movie, title, genres in rows], skipped


def _movie(title: str, genres: str) -> dict[str, Any]:
    return {"title": title, "categories": [] if genres == NO_GENRES else genres.split("|")}


def _item_table(path: Path, cfg: DataConfig, log_items: pa.Array) -> tuple[pa.Table, int]:
    read = _movies_dat if path.suffix == ".dat" else _movies_csv
    records, skipped = read(path, cfg.on_bad_rows)
    if not records:
        raise DataError(str(path), "no movies")
    table = table_from_records(records, cfg.text_columns, str(path))
    ids = align_ids(table["item_id"].combine_chunks(), log_items, str(path), "movie id")
    return table.set_column(0, "item_id", ids), skipped


def read_movielens(cfg: DataConfig) -> RawLog:
    path = existing_file(cfg.interactions)
    source = str(path)
    table, skipped, first_line = _read_ratings(path, cfg.on_bad_rows)

    def where(i: int) -> str:
        return f"line {i + first_line}"

    user_column, item_column, time_column = table.column_names
    users = parse_ids(table[user_column].combine_chunks(), IdType.int, source, where, "user id")
    items = parse_ids(table[item_column].combine_chunks(), IdType.int, source, where, "movie id")
    times = order_key(table[time_column], source, time_column, where)
    sources, item_table = [source], None
    movies = item_file(cfg)
    if movies is not None:
        item_table, skipped_movies = _item_table(movies, cfg, items)
        skipped += skipped_movies
        sources.append(str(movies))
    return RawLog(
        users=users,
        items=items,
        times=times,
        item_table=item_table,
        sources=sources,
        skipped_rows=skipped,
    )
