"""Amazon (2014, 2023) and MovieLens (1M, latest) readers on small files in the real schemas."""

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pytest
from omegaconf import OmegaConf

from genrec.data_pipeline.config import BadRows, DataConfig, DataFormat, IdType
from genrec.data_pipeline.raw_log import RawLog
from genrec.data_pipeline.readers import amazon as amazon_module
from genrec.data_pipeline.readers.amazon import read_amazon
from genrec.data_pipeline.readers.movielens import read_movielens
from genrec.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
AMAZON = FIXTURES / "amazon"
REVIEWS_2014 = AMAZON / "reviews_Office_Products_5.json"
META_2014 = AMAZON / "meta_Office_Products.json"
REVIEWS_2023 = AMAZON / "Office_Products.jsonl.gz"
META_2023 = AMAZON / "meta_Office_Products.jsonl"
ML_1M = FIXTURES / "movielens" / "ml-1m"
ML_LATEST = FIXTURES / "movielens" / "ml-latest-small"


def config(fmt: DataFormat, interactions: Path, **overrides: Any) -> DataConfig:
    """A DataConfig as `genrec prepare` builds it: structured defaults, overrides, to_object.

    The DictConfig itself will not do: `cfg.items` on it is the mapping's `items` method.
    """
    cfg = OmegaConf.structured(DataConfig)
    cfg.format = fmt
    cfg.interactions = str(interactions)
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
    cfg = OmegaConf.merge(cfg, overrides)
    return OmegaConf.to_object(cfg)


def amazon(interactions: Path, **overrides: Any) -> RawLog:
    return read_amazon(config(DataFormat.amazon, interactions, **overrides))


def movielens(interactions: Path, **overrides: Any) -> RawLog:
    return read_movielens(config(DataFormat.movielens, interactions, **overrides))


def count_unique(values: Any) -> int:
    return len(pc.unique(values))


def rows_by_id(log: RawLog) -> dict[Any, dict[str, Any]]:
    return {row["item_id"]: row for row in log.item_table.to_pylist()}


def user_times(log: RawLog, user: Any) -> list[int]:
    return log.times[np.asarray(pc.equal(log.users, user))].tolist()


def lines_of(path: Path, encoding: str = "utf-8") -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding=encoding) as f:
        return f.read().splitlines(keepends=True)


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_text("".join(lines), encoding=encoding)
    return path


# Amazon 2014: strict-JSON reviews, loose (Python literal) metadata.


def test_amazon_2014_reviews() -> None:
    log = amazon(REVIEWS_2014)
    assert (len(log.users), count_unique(log.users), count_unique(log.items)) == (60, 8, 10)
    assert str(log.users.type) == str(log.items.type) == "string"
    assert "0078800242" in log.items.to_pylist()
    assert log.times.dtype == np.int64
    assert log.times[:3].tolist() == [1262304000, 1264032000, 1265760000]
    assert user_times(log, "AUJZDE8GXD6NCF") == [1262304000 + k * 11 * 86400 for k in range(8)]
    assert log.item_table is None
    assert log.skipped_rows == 0
    assert log.sources == [str(REVIEWS_2014)]


def test_amazon_2014_loose_metadata() -> None:
    log = amazon(REVIEWS_2014, items=META_2014)
    table = log.item_table
    assert table.column_names == ["item_id", "title", "description", "brand", "categories"]
    assert table.num_rows == 11
    rows = rows_by_id(log)
    post_it = rows["B00004Z5M1"]
    assert post_it["title"] == "Post-it Notes, 3 in x 3 in, Canary Yellow & Assorted, 12 Pads"
    assert post_it["description"] == (
        "Sticks securely, removes cleanly. Avery's rival in every office."
    )
    assert post_it["brand"] == "Post-it"
    assert post_it["categories"] == (
        "Office Products, Office & School Supplies, Paper, Notebooks & Writing Pads"
    )
    assert rows["B00000JBLH"]["categories"] == (
        "Office Products, Office Electronics, Calculators, Graphing, "
        "Electronics, Computers & Accessories"
    )
    assert rows["B0000AQO0O"]["title"] == 'Swingline Standard Staples, 1/4" Length, 5000/Box'
    assert rows["B001E6DMKY"]["title"] == rows["B001E6DMKY"]["brand"] == ""
    assert log.sources == [str(REVIEWS_2014), str(META_2014)]


def test_amazon_int_ids_name_the_line() -> None:
    message = r"reviews_Office_Products_5\.json: line 1: non-numeric user id"
    with pytest.raises(DataError, match=message):
        amazon(REVIEWS_2014, id_type=IdType.int)


# Amazon 2023: gzipped reviews keyed by parent_asin, JSON metadata with store and lists.


def test_amazon_2023_gz_uses_parent_asin() -> None:
    log = amazon(REVIEWS_2023, items=META_2023)
    assert (len(log.users), count_unique(log.users), count_unique(log.items)) == (30, 6, 5)
    variant_asins = {"B07FKTL9QZ", "B08L6ZQ2AB", "B08L6ZQ3CD", "B09XQ7B2LM"}
    assert not variant_asins & set(log.items.to_pylist())
    assert log.times[:2].tolist() == [1609459200000, 1609545600123]
    assert set(log.item_table["item_id"].to_pylist()) == set(log.items.to_pylist())
    rows = rows_by_id(log)
    pens = rows["B07FKTK4PN"]
    assert pens["brand"] == "BIC"
    assert pens["description"] == "A classic pen., Writes first time, every time."
    assert pens["categories"] == (
        "Office Products, Office & School Supplies, Writing & Correction Supplies, Pens & Refills"
    )
    assert rows["B08L6ZQ1YC"]["title"] == "Amazon Basics Lined Writing Pad – Letter Size, 12-Pack"
    assert rows["B01N5RVPZ4"]["categories"] == ""


def test_amazon_2023_falls_back_to_asin(tmp_path: Path) -> None:
    lines = lines_of(REVIEWS_2023)
    lines[0] = lines[0].replace('"parent_asin": "B07FKTK4PN", ', "")
    log = amazon(write(tmp_path / "Office_Products.jsonl", lines))
    assert len(log.items) == 30
    assert log.items[0].as_py() == "B07FKTK4PN"


def test_amazon_requested_text_columns() -> None:
    log = amazon(REVIEWS_2023, items=META_2023, text_columns=["title", "features"])
    assert log.item_table.column_names == ["item_id", "title", "features"]
    assert rows_by_id(log)["B07FKTK4PN"]["features"] == "Medium point, Smooth writing"


def test_amazon_clean_dumps_skip_the_line_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clean dumps, gzipped or not, go through pyarrow; the Python scan is only a fallback."""

    def no_scan(*args: Any) -> None:
        raise AssertionError("line-by-line scan used on a clean dump")

    monkeypatch.setattr(amazon_module, "_scan", no_scan)
    assert len(amazon(REVIEWS_2014).users) == 60
    assert len(amazon(REVIEWS_2023).users) == 30


# Amazon bad input.


def broken_reviews(tmp_path: Path) -> Path:
    lines = lines_of(REVIEWS_2014)
    lines[10] = lines[10][:40] + "\n"
    return write(tmp_path / "reviews_Broken.json", lines)


def test_amazon_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"reviews_Broken\.json: line 11: invalid JSON"):
        amazon(broken_reviews(tmp_path))


def test_amazon_skip_counts_bad_lines(tmp_path: Path) -> None:
    log = amazon(broken_reviews(tmp_path), on_bad_rows=BadRows.skip)
    assert log.skipped_rows == 1
    assert len(log.users) == 59


def test_amazon_missing_field(tmp_path: Path) -> None:
    lines = lines_of(REVIEWS_2014)
    lines[4] = lines[4].replace('"unixReviewTime"', '"reviewTimeRaw"')
    path = write(tmp_path / "reviews_Missing.json", lines)
    with pytest.raises(DataError, match=r"reviews_Missing\.json: line 5: 'unixReviewTime'"):
        amazon(path)
    assert amazon(path, on_bad_rows=BadRows.skip).skipped_rows == 1


def test_amazon_gz_malformed_line(tmp_path: Path) -> None:
    lines = lines_of(REVIEWS_2023)
    lines[2] = '{"user_id": "AE1", "parent_asin": "B00TOY5VGM", "timestamp": 1609459200000\n'
    path = tmp_path / "Broken.jsonl.gz"
    path.write_bytes(gzip.compress("".join(lines).encode()))
    with pytest.raises(DataError, match=r"Broken\.jsonl\.gz: line 3: invalid JSON"):
        amazon(path)


def test_amazon_bad_metadata_line(tmp_path: Path) -> None:
    lines = lines_of(META_2014)
    lines[2] = "{'asin': 'B00004Z5M1', 'title': \n"
    meta = write(tmp_path / "meta_Broken.json", lines)
    with pytest.raises(DataError, match=r"meta_Broken\.json: line 3: neither JSON nor"):
        amazon(REVIEWS_2014, items=meta)
    log = amazon(REVIEWS_2014, items=meta, on_bad_rows=BadRows.skip)
    assert log.skipped_rows == 1
    assert log.item_table.num_rows == 10


def test_amazon_metadata_without_id(tmp_path: Path) -> None:
    lines = lines_of(META_2023)
    lines[1] = lines[1].replace('"parent_asin"', '"product"')
    with pytest.raises(DataError, match=r"meta_NoId\.jsonl: line 2: missing 'parent_asin'"):
        amazon(REVIEWS_2023, items=write(tmp_path / "meta_NoId.jsonl", lines))


def test_amazon_unknown_schema(tmp_path: Path) -> None:
    path = write(tmp_path / "other.json", ['{"customer": "A1", "product": "B1", "time": 1}\n'])
    with pytest.raises(DataError, match=r"other\.json: line 1: no 'reviewerID' or 'user_id' field"):
        amazon(path)


def test_amazon_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.json", [])
    with pytest.raises(DataError, match=r"empty\.json: file is empty"):
        amazon(path)


# MovieLens 1M: `::`-separated, latin-1 movies.dat found beside ratings.dat.


def test_movielens_1m() -> None:
    log = movielens(ML_1M / "ratings.dat")
    assert (len(log.users), count_unique(log.users), count_unique(log.items)) == (36, 6, 9)
    assert str(log.users.type) == str(log.items.type) == "int64"
    assert log.items[:3].to_pylist() == [2, 11, 260]
    assert user_times(log, 1) == [978301037, 978301185, 978301000, 978301148, 978301111, 978301074]
    assert log.sources == [str(ML_1M / "ratings.dat"), str(ML_1M / "movies.dat")]
    table = log.item_table
    assert table.column_names == ["item_id", "title", "categories"]
    assert str(table["item_id"].type) == "int64"
    rows = rows_by_id(log)
    assert len(rows) == 9
    assert rows[2691]["title"] == "Légende du pianiste sur l'océan, La (1998)"
    assert rows[2228]["title"] == '"Great Performances" Cats (1998)'
    assert rows[1]["categories"] == "Animation, Children's, Comedy"


def test_movielens_explicit_items(tmp_path: Path) -> None:
    ratings = write(tmp_path / "ratings.dat", lines_of(ML_1M / "ratings.dat"))
    assert movielens(ratings).item_table is None
    log = movielens(ratings, items=ML_1M / "movies.dat")
    assert log.item_table.num_rows == 9


# MovieLens latest: CSV with header and quoted titles.


def test_movielens_latest_csv() -> None:
    log = movielens(ML_LATEST / "ratings.csv")
    assert (len(log.users), count_unique(log.users), count_unique(log.items)) == (25, 5, 6)
    assert str(log.items.type) == "int64"
    assert user_times(log, 1) == [964980740, 964980680, 964980620, 964980560, 964980500]
    rows = rows_by_id(log)
    assert rows[11]["title"] == "American President, The (1995)"
    assert rows[2571]["categories"] == "Action, Sci-Fi, Thriller"
    assert rows[114074]["categories"] == ""


# MovieLens bad input.


def test_movielens_non_numeric_movie_id(tmp_path: Path) -> None:
    lines = lines_of(ML_1M / "ratings.dat")
    lines[2] = "1::tt0076759::4::978301000\n"
    path = write(tmp_path / "ratings.dat", lines)
    with pytest.raises(DataError, match=r"ratings\.dat: line 3: non-numeric movie id 'tt0076759'"):
        movielens(path)


def test_movielens_malformed_line(tmp_path: Path) -> None:
    lines = lines_of(ML_1M / "ratings.dat")
    lines[3] = "1::593::3\n"
    path = write(tmp_path / "ratings.dat", lines)
    with pytest.raises(DataError, match=r"ratings\.dat: line 4: expected 4 columns, got 3"):
        movielens(path)
    log = movielens(path, on_bad_rows=BadRows.skip)
    assert (log.skipped_rows, len(log.items)) == (1, 35)


def test_movielens_missing_column(tmp_path: Path) -> None:
    lines = [line.rsplit(",", 1)[0] + "\n" for line in lines_of(ML_LATEST / "ratings.csv")]
    path = write(tmp_path / "ratings.csv", lines)
    with pytest.raises(DataError, match=r"ratings\.csv: missing column\(s\) \['timestamp'\]"):
        movielens(path)


def test_movielens_bad_movies_line(tmp_path: Path) -> None:
    ratings = write(tmp_path / "ratings.dat", lines_of(ML_1M / "ratings.dat"))
    movies = lines_of(ML_1M / "movies.dat", encoding="latin-1")
    movies[1] = "2::Jumanji (1995)\n"
    write(tmp_path / "movies.dat", movies, encoding="latin-1")
    with pytest.raises(DataError, match=r"movies\.dat: line 2: expected MovieID::Title::Genres"):
        movielens(ratings)
    log = movielens(ratings, on_bad_rows=BadRows.skip)
    assert (log.skipped_rows, log.item_table.num_rows) == (1, 8)


def test_movielens_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.dat", [])
    with pytest.raises(DataError, match=r"ratings\.dat: file is empty"):
        movielens(path)
