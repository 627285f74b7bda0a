"""`genrec prepare`: raw log -> filtered, split, sharded dataset under `run_dir/data/`.

The output directory is written whole to a scratch path and renamed into place, and it is
reused when its fingerprint (inputs' content + data config + format version) is unchanged.
"""

import json
import logging
import time
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from genrec.artifacts import MANIFEST
from genrec.data_pipeline.preprocess import FilterStats, Sequences, build_sequences
from genrec.data_pipeline.raw_log import RawLog
from genrec.data_pipeline.readers import read_raw_log
from genrec.data_pipeline.readers.files import input_files
from genrec.data_pipeline.shards import write_shards
from genrec.data_pipeline.split import (
    eval_split,
    hold_out_users,
    list_array,
    num_prefix_examples,
    train_sequences,
)
from genrec.errors import DataError
from genrec.provenance import (
    atomic_dir,
    code_version,
    file_digest,
    fingerprint,
    to_plain,
    write_json,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 2


def dataset_fingerprint(cfg: DictConfig) -> tuple[str, list[dict[str, Any]]]:
    """Hash of what determines the dataset: input file contents and the data config."""
    sources = [
        {"path": str(p), "bytes": p.stat().st_size, "sha256": file_digest(p)}
        for p in input_files(OmegaConf.to_object(cfg.data))
    ]
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True)
    for key in ("interactions", "items"):
        data_cfg.pop(key)
    if not data_cfg["holdout_users"]:  # a dataset without unseen users keeps its fingerprint
        data_cfg.pop("holdout_users")
    digest = fingerprint(FORMAT_VERSION, data_cfg, [s["sha256"] for s in sources])
    return digest, sources


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared dataset; a missing or broken one is a DataError naming it."""
    path = Path(data_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise DataError(str(path), f"cannot read it ({err}); run `genrec prepare` first") from err
    except json.JSONDecodeError as err:
        raise DataError(str(path), f"not valid JSON: {err}") from err


def _reusable(data_dir: Path, digest: str) -> bool:
    try:
        manifest = load_manifest(data_dir)
    except DataError:
        return False
    return manifest.get("fingerprint") == digest and all(
        (data_dir / shard["path"]).is_file() for shard in manifest["shards"]
    )


def item_text_table(seqs: Sequences, raw: RawLog) -> tuple[pa.Table, list[str], int]:
    """Items with contiguous ids, raw ids and their text ("" where the metadata has none), the
    text columns and how many items have any text."""
    table = pa.table(
        {"item": pa.array(np.arange(seqs.num_items, dtype=np.int32)), "raw_id": seqs.item_ids}
    )
    if raw.item_table is None:
        return table, [], 0
    meta = raw.item_table
    index = pc.index_in(seqs.item_ids, value_set=meta["item_id"].combine_chunks())
    columns = [c for c in meta.column_names if c != "item_id"]
    for column in columns:
        table = table.append_column(column, pc.fill_null(meta[column].take(index), ""))
    return table, columns, _items_with_text(table, columns)


def _items_with_text(table: pa.Table, columns: list[str]) -> int:
    """Items with a non-blank value in some text column."""
    blank = [pc.equal(pc.utf8_trim_whitespace(table[column]), "") for column in columns]
    return int(pc.sum(pc.invert(reduce(pc.and_, blank))).as_py() or 0) if columns else 0


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Id lists barely compress by dictionary, and trying costs a second at 10^7 interactions."""
    pq.write_table(table, path, use_dictionary=False)


def _write_tables(
    out: Path, seqs: Sequences, held: Sequences, raw: RawLog, max_history: int
) -> dict[str, Any]:
    """The tables of the manifest; users held out of training get ids after the others."""
    everyone = seqs.num_users + held.num_users
    users = pa.table(
        {
            "user": pa.array(np.arange(everyone, dtype=np.int32)),
            "raw_id": pa.concat_arrays([seqs.user_ids, held.user_ids]),
        }
    )
    pq.write_table(users, out / "users.parquet")
    items, text_columns, with_text = item_text_table(seqs, raw)
    pq.write_table(items, out / "items.parquet")
    _write_parquet(
        pa.table(
            {"user": users["user"][: seqs.num_users], "items": list_array(seqs.offsets, seqs.items)}
        ),
        out / "sequences.parquet",
    )
    counts = {}
    for name, users, holdout in (("valid", seqs, 2), ("test", seqs, 1), ("holdout", held, 1)):
        split = eval_split(users, holdout, max_history)
        split.users += seqs.num_users if users is held else 0
        _write_parquet(split.to_table(), out / f"{name}.parquet")
        counts[name] = int(split.targets.size)
    return {"text_columns": text_columns, "items_with_text": with_text, "eval_counts": counts}


def _manifest(
    cfg: DictConfig,
    digest: str,
    sources: list[dict],
    raw: RawLog,
    seqs: Sequences,
    stats: FilterStats,
    tables: dict[str, Any],
    shards: list[dict],
    train_examples: int,
) -> dict[str, Any]:
    return {
        "fingerprint": digest,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "num_users": seqs.num_users,
        "num_items": seqs.num_items,
        "num_interactions": int(seqs.items.size),
        "num_train_examples": train_examples,
        "num_valid_examples": tables["eval_counts"]["valid"],
        "num_test_examples": tables["eval_counts"]["test"],
        "num_holdout_users": tables["eval_counts"]["holdout"],
        "max_history": cfg.data.max_history,
        "raw": {
            "interactions": stats.raw_interactions,
            "users": stats.raw_users,
            "items": stats.raw_items,
            "skipped_rows": raw.skipped_rows,
            "kcore_rounds": stats.rounds,
        },
        "text_columns": tables["text_columns"],
        "items_with_text": tables["items_with_text"],
        "tables": {
            name: f"{name}.parquet"
            for name in ("users", "items", "sequences", "valid", "test", "holdout")
        },
        "shards": shards,
        "sources": sources,
        "config": to_plain(cfg),
        "code": code_version(),
    }


def prepare(cfg: DictConfig) -> Path:
    """Build (or reuse) `run_dir/data` and return its path."""
    data_dir = Path(cfg.run_dir) / "data"
    digest, sources = dataset_fingerprint(cfg)
    if _reusable(data_dir, digest):
        log.info("prepare: reusing %s (fingerprint %s)", data_dir, digest)
        return data_dir
    started = time.perf_counter()
    raw = read_raw_log(OmegaConf.to_object(cfg.data))
    source = cfg.data.interactions or "synthetic"
    seqs, stats = build_sequences(
        raw, cfg.data.min_user_interactions, cfg.data.min_item_interactions, source
    )
    log.info(
        "prepare: %d users, %d items, %d interactions after %d-round k-core (read %d)",
        seqs.num_users,
        seqs.num_items,
        seqs.items.size,
        stats.rounds,
        stats.raw_interactions,
    )
    with atomic_dir(data_dir) as out:
        seqs, held = hold_out_users(seqs, cfg.data.holdout_users, cfg.data.shuffle_seed)
        tables = _write_tables(out, seqs, held, raw, cfg.data.max_history)
        train_offsets, train_items = train_sequences(seqs)
        shards = write_shards(
            out / "shards",
            train_offsets,
            train_items,
            cfg.data.users_per_shard,
            cfg.data.shuffle_seed,
        )
        manifest = _manifest(
            cfg,
            digest,
            sources,
            raw,
            seqs,
            stats,
            tables,
            shards,
            num_prefix_examples(train_offsets),
        )
        manifest["seconds"] = round(time.perf_counter() - started, 3)
        write_json(out / MANIFEST, manifest)
    log.info("prepare: wrote %s in %.1fs", data_dir, time.perf_counter() - started)
    return data_dir
