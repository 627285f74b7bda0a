"""LC-Rec JSON, S3Rec-style sequences and CSV/TSV/Parquet logs, with their bad-input errors."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from genrec.data_pipeline.readers import read_raw_log
from genrec.errors import DataError


def read(make_config, *overrides):
    return read_raw_log(OmegaConf.to_object(make_config(*overrides).data))


def test_lcrec_reads_sequences_and_companion_item_file(tmp_path, make_config):
    inter = tmp_path / "Toy.inter.json"
    inter.write_text(json.dumps({"0": [3, 1, 2], "1": [1, 3]}))
    (tmp_path / "Toy.item.json").write_text(
        json.dumps(
            {
                "1": {"title": "Red &amp; Blue", "categories": [["Toys", "Cars"]]},
                "3": {"title": "Kite", "brand": "Acme"},
            }
        )
    )
    raw = read(make_config, "data.format=lcrec", f"data.interactions={inter}")
    assert raw.users.to_pylist() == [0, 0, 0, 1, 1]
    assert raw.items.to_pylist() == [3, 1, 2, 1, 3]
    table = raw.item_table.to_pydict()
    assert table["item_id"] == [1, 3]
    assert table["title"] == ["Red & Blue", "Kite"]
    assert table["categories"] == ["Toys, Cars", ""]
    assert len(raw.sources) == 2


def test_lcrec_bad_sequence_names_the_user(tmp_path, make_config):
    inter = tmp_path / "x.inter.json"
    inter.write_text(json.dumps({"0": [1, 2], "7": ["a", 2]}))
    with pytest.raises(DataError, match=r"x\.inter\.json.*user '7'"):
        read(make_config, "data.format=lcrec", f"data.interactions={inter}")
    raw = read(
        make_config, "data.format=lcrec", f"data.interactions={inter}", "data.on_bad_rows=skip"
    )
    assert raw.skipped_rows == 1
    assert raw.items.to_pylist() == [1, 2]


def test_lcrec_invalid_json_names_line(tmp_path, make_config):
    inter = tmp_path / "x.inter.json"
    inter.write_text('{\n "0": [1, 2],\n "1": [3 4]\n}')
    with pytest.raises(DataError, match=r"x\.inter\.json: line 3"):
        read(make_config, "data.format=lcrec", f"data.interactions={inter}")


def test_sequences_with_item_table_unescapes_html(tmp_path, make_config):
    seqs = tmp_path / "seq.txt"
    seqs.write_text("1 1 2 3\n2 2 3\n\n")
    items = tmp_path / "items.tsv"
    items.write_text(
        "s3rec_item_id\tasin\ttitle\tcategories\n1\tA1\tSoap &amp; Co\tBeauty|Bath\n"
        "2\tA2\tComb\tBeauty\n"
    )
    raw = read(
        make_config,
        "data.format=sequences",
        f"data.interactions={seqs}",
        f"data.items={items}",
        "data.item_id_column=s3rec_item_id",
    )
    assert raw.users.to_pylist() == [1, 1, 1, 2, 2]
    assert raw.items.to_pylist() == [1, 2, 3, 2, 3]
    table = raw.item_table.to_pydict()
    assert table["title"] == ["Soap & Co", "Comb"]
    assert table["categories"] == ["Beauty, Bath", "Beauty"]


def test_sequences_string_ids(tmp_path, make_config):
    seqs = tmp_path / "asin.txt"
    seqs.write_text("U1 B01 B02\nU2 B02 B03 B01\n")
    raw = read(make_config, "data.format=sequences", f"data.interactions={seqs}")
    assert raw.items.type == pa.string()
    assert raw.users.to_pylist() == ["U1", "U1", "U2", "U2", "U2"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("1 1 2\n2\n", r"line 2: user '2' has no items"),
        ("1 1 2\n2 5 x7\n", r"line 2: non-numeric id 'x7'"),
        ("\n\n", r"no sequences"),
    ],
)
def test_sequences_bad_lines(tmp_path, make_config, text, error):
    seqs = tmp_path / "bad.txt"
    seqs.write_text(text)
    with pytest.raises(DataError, match=rf"bad\.txt: {error}"):
        read(make_config, "data.format=sequences", f"data.interactions={seqs}", "data.id_type=int")


def test_sequences_skip_mode_counts(tmp_path, make_config):
    seqs = tmp_path / "s.txt"
    seqs.write_text("1 1 2\n2\n3 4\n")
    raw = read(
        make_config, "data.format=sequences", f"data.interactions={seqs}", "data.on_bad_rows=skip"
    )
    assert raw.skipped_rows == 1
    assert raw.users.to_pylist() == [1, 1, 3]


def test_item_table_missing_text_column(tmp_path, make_config):
    seqs = tmp_path / "s.txt"
    seqs.write_text("1 1 2\n")
    items = tmp_path / "items.csv"
    items.write_text("id,title\n1,a\n")
    with pytest.raises(DataError, match=r"items\.csv: text column\(s\) \['name'\] not found"):
        read(
            make_config,
            "data.format=sequences",
            f"data.interactions={seqs}",
            f"data.items={items}",
            "data.text_columns=[name]",
        )


def test_item_table_non_numeric_id(tmp_path, make_config):
    seqs = tmp_path / "s.txt"
    seqs.write_text("1 1 2\n")
    items = tmp_path / "items.csv"
    items.write_text("id,title\n1,a\nB0X,b\n")
    with pytest.raises(
        DataError, match=r"items\.csv: row 2 of column 'first': non-numeric item id 'B0X'"
    ):
        read(
            make_config, "data.format=sequences", f"data.interactions={seqs}", f"data.items={items}"
        )


def test_csv_log_orders_by_timestamp_and_renames_columns(tmp_path, make_config):
    log = tmp_path / "log.csv"
    log.write_text("uid,iid,ts,rating\n1,10,300,5\n1,11,100,4\n2,10,50,3\n")
    raw = read(
        make_config,
        "data.format=log",
        f"data.interactions={log}",
        "data.user_column=uid",
        "data.item_column=iid",
        "data.time_column=ts",
    )
    assert raw.users.to_pylist() == [1, 1, 2]
    assert raw.times.tolist() == [300, 100, 50]


def test_tsv_log_with_iso_dates(tmp_path, make_config):
    log = tmp_path / "log.tsv"
    log.write_text("user_id\titem_id\ttimestamp\nu\ta\t2020-01-02\nu\tb\t2020-01-01\n")
    raw = read(make_config, "data.format=log", f"data.interactions={log}")
    assert raw.times[0] > raw.times[1]


def test_parquet_log(tmp_path, make_config):
    log = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [5, 6], "timestamp": [1.5, 2.5]}), log)
    raw = read(make_config, "data.format=log", f"data.interactions={log}")
    assert raw.items.to_pylist() == [5, 6]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("user_id,item_id\n1,2\n", r"missing column\(s\) \['timestamp'\]"),
        ("user_id,item_id,timestamp\n1,2,3\n1,2\n", r"line 3: expected 3 columns, got 2"),
        (
            "user_id,item_id,timestamp\n1,2,3\n1,,4\n",
            r"line 3: empty value in column\(s\) \['item_id'\]",
        ),
        (
            "user_id,item_id,timestamp\n1,2,3\n1,2,soon\n",
            r"line 3: column .timestamp. holds .soon.",
        ),
        ("user_id,item_id,timestamp\n", r"no rows"),
    ],
)
def test_log_bad_rows(tmp_path, make_config, text, error):
    log = tmp_path / "bad.csv"
    log.write_text(text)
    with pytest.raises(DataError, match=rf"bad\.csv: {error}"):
        read(make_config, "data.format=log", f"data.interactions={log}")


def test_log_non_numeric_id_when_ints_required(tmp_path, make_config):
    log = tmp_path / "bad.csv"
    log.write_text("user_id,item_id,timestamp\n1,2,3\n1,abc,4\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 3: non-numeric item id 'abc'"):
        read(make_config, "data.format=log", f"data.interactions={log}", "data.id_type=int")


def test_log_skip_mode_counts_bad_rows(tmp_path, make_config):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n1,2,3\n1,2\n1,,4\n2,3,5\n")
    raw = read(make_config, "data.format=log", f"data.interactions={log}", "data.on_bad_rows=skip")
    assert raw.skipped_rows == 2
    assert raw.users.to_pylist() == [1, 2]


@pytest.mark.parametrize("fmt", ["lcrec", "sequences", "log"])
def test_empty_and_missing_files(tmp_path, make_config, fmt):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        read(make_config, f"data.format={fmt}", f"data.interactions={empty}")
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read(make_config, f"data.format={fmt}", f"data.interactions={tmp_path / 'nope.csv'}")
