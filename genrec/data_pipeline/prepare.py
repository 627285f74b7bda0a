"""`genrec prepare`: raw log -> filtered, split, sharded dataset under `run_dir/data/`.

The output directory is written whole to a scratch path and renamed into place, and it is
reused when its fingerprint (inputs' content + data config + format version) is unchanged.
"""

import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from genrec.artifacts import MANIFEST
from genrec.data_pipeline.config import Engine
from genrec.data_pipeline.dataset_tables import (
    Prepared,
    log_filtered,
    write_item_and_user_tables,
    write_parquet,
)
from genrec.data_pipeline.preprocess import build_sequences
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
    for key in ("interactions", "items", "engine"):  # both engines make the same dataset
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


def _prepare_here(cfg: DictConfig, out: Path) -> Prepared:
    """The whole log in this process's memory, every step vectorised over it."""
    raw = read_raw_log(OmegaConf.to_object(cfg.data))
    source = cfg.data.interactions or "synthetic"
    seqs, stats = build_sequences(
        raw, cfg.data.min_user_interactions, cfg.data.min_item_interactions, source
    )
    log_filtered(seqs.num_users, seqs.num_items, int(seqs.items.size), stats)
    seqs, held = hold_out_users(seqs, cfg.data.holdout_users, cfg.data.shuffle_seed)
    text = write_item_and_user_tables(
        out, pa.concat_arrays([seqs.user_ids, held.user_ids]), seqs.item_ids, raw.item_table
    )
    write_parquet(
        pa.table(
            {
                "user": pa.array(np.arange(seqs.num_users, dtype=np.int32)),
                "items": list_array(seqs.offsets, seqs.items),
            }
        ),
        out / "sequences.parquet",
    )
    counts = {}
    for name, users, holdout in (("valid", seqs, 2), ("test", seqs, 1), ("holdout", held, 1)):
        first = seqs.num_users if users is held else 0
        split = eval_split(users.offsets, users.items, holdout, cfg.data.max_history, first)
        write_parquet(split.to_table(), out / f"{name}.parquet")
        counts[name] = int(split.targets.size)
    train_offsets, train_items = train_sequences(seqs)
    shards = write_shards(
        out / "shards", train_offsets, train_items, cfg.data.users_per_shard, cfg.data.shuffle_seed
    )
    return Prepared(
        num_users=seqs.num_users,
        num_items=seqs.num_items,
        num_interactions=int(seqs.items.size),
        train_examples=num_prefix_examples(train_offsets),
        eval_counts=counts,
        text_columns=text[0],
        items_with_text=text[1],
        stats=stats,
        skipped_rows=raw.skipped_rows,
        shards=shards,
    )


def _manifest(cfg: DictConfig, digest: str, sources: list[dict], done: Prepared) -> dict[str, Any]:
    return {
        "fingerprint": digest,
        "format_version": FORMAT_VERSION,
        "engine": cfg.data.engine.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "num_users": done.num_users,
        "num_items": done.num_items,
        "num_interactions": done.num_interactions,
        "num_train_examples": done.train_examples,
        "num_valid_examples": done.eval_counts["valid"],
        "num_test_examples": done.eval_counts["test"],
        "num_holdout_users": done.eval_counts["holdout"],
        "max_history": cfg.data.max_history,
        "raw": {
            "interactions": done.stats.raw_interactions,
            "users": done.stats.raw_users,
            "items": done.stats.raw_items,
            "skipped_rows": done.skipped_rows,
            "kcore_rounds": done.stats.rounds,
        },
        "text_columns": done.text_columns,
        "items_with_text": done.items_with_text,
        "tables": {
            name: f"{name}.parquet"
            for name in ("users", "items", "sequences", "valid", "test", "holdout")
        },
        "shards": done.shards,
        "sources": sources,
        "config": to_plain(cfg),
        "code": code_version(),
    }


def prepare(cfg: DictConfig, on_ray: Callable[[], AbstractContextManager] | None = None) -> Path:
    """Build (or reuse) `run_dir/data` and return its path. With `data.engine=ray` the work
    runs inside `on_ray()` (a Ray connection), entered only when there is work to do."""
    data_dir = Path(cfg.run_dir) / "data"
    digest, sources = dataset_fingerprint(cfg)
    if _reusable(data_dir, digest):
        log.info("prepare: reusing %s (fingerprint %s)", data_dir, digest)
        return data_dir
    started = time.perf_counter()
    with atomic_dir(data_dir) as out:
        if cfg.data.engine is Engine.ray:
            from genrec.data_pipeline.ray_prepare import prepare_on_ray

            with on_ray() if on_ray else nullcontext():
                done = prepare_on_ray(cfg, out)
        else:
            done = _prepare_here(cfg, out)
        manifest = _manifest(cfg, digest, sources, done)
        manifest["seconds"] = round(time.perf_counter() - started, 3)
        write_json(out / MANIFEST, manifest)
    log.info("prepare: wrote %s in %.1fs", data_dir, time.perf_counter() - started)
    return data_dir
