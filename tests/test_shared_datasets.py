"""The real datasets in ../shared/datasets, read in their native formats (skipped where absent)."""

import pyarrow.parquet as pq
import pytest

from genrec.data_pipeline.prepare import load_manifest, prepare
from tests.conftest import shared_dataset

pytestmark = pytest.mark.shared


def prepared(make_config, *overrides):
    data = prepare(make_config(*overrides))
    return data, load_manifest(data)


def test_office_lcrec(make_config):
    inter = shared_dataset("amazon14_office", "Office_Products.inter.json")
    data, m = prepared(make_config, "data.format=lcrec", f"data.interactions={inter}")
    assert (m["num_users"], m["num_items"], m["num_interactions"]) == (4905, 2420, 53258)
    assert m["text_columns"] == ["title", "description", "brand"]
    assert m["num_valid_examples"] == m["num_test_examples"] == 4905
    items = pq.read_table(data / "items.parquet").to_pydict()
    assert items["raw_id"][:3] == [0, 1, 2]
    assert items["title"][1] == "Texas Instruments TI-1795 SV Standard Function Calculator"


def test_beauty_sequences_with_titles(make_config):
    seqs = shared_dataset("amazon14_beauty", "s3rec_Beauty.txt")
    table = shared_dataset("amazon14_beauty", "beauty_items_with_titles.tsv")
    data, m = prepared(
        make_config,
        "data.format=sequences",
        f"data.interactions={seqs}",
        f"data.items={table}",
        "data.item_id_column=s3rec_item_id",
        "data.text_columns=[title,categories]",
    )
    assert (m["num_users"], m["num_items"], m["num_interactions"]) == (22363, 12101, 198502)
    assert m["items_with_text"] == 12101
    items = pq.read_table(data / "items.parquet").to_pydict()
    assert items["raw_id"][0] == 1  # s3rec ids are 1-based; contiguous id = letter id = s3rec - 1
    assert items["title"][0] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    assert sum(1 for t in items["title"] if t) == 12094
    assert not any("&amp;" in t for t in items["title"])


def test_beauty_lcrec_agrees_with_s3rec(make_config):
    inter = shared_dataset("amazon14_beauty", "letter_Beauty.inter.json")
    _, m = prepared(make_config, "data.format=lcrec", f"data.interactions={inter}")
    assert (m["num_users"], m["num_items"], m["num_interactions"]) == (22363, 12101, 198502)


def test_beauty_asin_sequences(make_config):
    seqs = shared_dataset("amazon14_beauty", "p5_user_sequence_asin.txt")
    data, m = prepared(make_config, "data.format=sequences", f"data.interactions={seqs}")
    assert (m["num_users"], m["num_items"], m["num_interactions"]) == (22363, 12101, 198502)
    assert isinstance(pq.read_table(data / "users.parquet")["raw_id"][0].as_py(), str)


@pytest.mark.parametrize(
    ("folder", "file", "counts"),
    [
        ("amazon18_industrial_scientific", "Scientific.inter.json", (8317, 4344, 58492)),
        ("amazon18_instruments_lcrec", "Instruments.inter.json", (24772, 9922, 206153)),
    ],
)
def test_other_lcrec_datasets(make_config, folder, file, counts):
    inter = shared_dataset(folder, file)
    _, m = prepared(make_config, "data.format=lcrec", f"data.interactions={inter}")
    assert (m["num_users"], m["num_items"], m["num_interactions"]) == counts


def test_sports_sequences_with_keyword_table(make_config):
    seqs = shared_dataset("amazon14_sports", "s3rec_Sports_and_Outdoors.txt")
    table = shared_dataset("amazon14_sports", "sports_items.tsv")
    _, m = prepared(
        make_config,
        "data.format=sequences",
        f"data.interactions={seqs}",
        f"data.items={table}",
        "data.text_columns=[idgenrec_textual_id_NOT_title]",
    )
    assert (m["num_users"], m["num_items"], m["num_interactions"]) == (35598, 18357, 296337)
    assert m["items_with_text"] == 18357
