"""The re-tokenizing actor pool: Ray actors that code item vectors with every kept checkpoint.

Each actor loads the M checkpoints once (by path, `load_tokenizer`) and memory-maps the vector
file; a Ray Data `map_batches` over block starts hands blocks to `cluster.retokenize_actors`
actors (each with `cluster.retokenize_resources`), on the local instance or the cluster's nodes.
The driver resolves collisions per table and writes all tables at once
(genrec/tokenizers/tables.py). Blocks are fixed, so the tables equal serial coding exactly.
The checkpoints and the vector file must be on storage every node reads.
"""

import logging
import time
from pathlib import Path

import numpy as np
import ray
from omegaconf import DictConfig
from ray.data import DataContext

from genrec.artifacts import TABLES_INDEX
from genrec.cluster.runtime import ray_session
from genrec.provenance import file_digest, fingerprint, made_with, to_plain
from genrec.tokenizers.config import CollisionMode
from genrec.tokenizers.tables import (
    encode_block,
    existing_tables,
    items_checkpoints,
    kept_checkpoints,
    load_kept,
    resolve_tables,
    write_tables,
)
from genrec.tokenizers.tokenize import load_vectors

log = logging.getLogger(__name__)


class BlockEncoder:
    """One pool actor: the kept tokenizers, and the vectors mapped read-only."""

    def __init__(self, checkpoints: list[str], vectors: str, cfg: dict, distances: bool):
        import torch

        from genrec.config import config_from_dict

        assigned = ray.get_runtime_context().get_assigned_resources()
        torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
        tokenizer = config_from_dict({"tokenizer": cfg}).tokenizer
        self.vectors = np.load(vectors, mmap_mode="r")
        width = self.vectors.shape[1]
        self.tokenizers = [load_kept(Path(p), tokenizer, width) for p in checkpoints]
        self.distances = distances

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (start,), (stop,) = batch["start"], batch["stop"]
        codes, distances = encode_block(self.tokenizers, self.vectors[start:stop], self.distances)
        out = {"start": batch["start"], "codes": codes[None]}
        if distances is not None:
            out["distances"] = distances[None]
        return out


def pool_codes(
    checkpoints: list[Path], vectors_path: Path, start: int, stop: int, cfg: DictConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes [stop - start, M, L] of those rows of the vector file (and the last-level
    distances for Sinkhorn), coded by the actor pool, in row order."""
    cluster, block = cfg.cluster, cfg.cluster.retokenize_block
    sinkhorn = cfg.tokenizer.collisions is CollisionMode.sinkhorn
    starts = range(start, stop, block)
    DataContext.get_current().print_on_execution_start = False  # it prints the whole context
    work = ray.data.from_items(
        [{"start": s, "stop": min(s + block, stop)} for s in starts],
        override_num_blocks=len(starts),
    )
    resources = dict(cluster.retokenize_resources)
    coded = work.map_batches(
        BlockEncoder,
        fn_constructor_kwargs={
            "checkpoints": [str(Path(p).absolute()) for p in checkpoints],
            "vectors": str(Path(vectors_path).absolute()),
            "cfg": to_plain(cfg.tokenizer),
            "distances": sinkhorn,
        },
        batch_size=1,
        concurrency=cluster.retokenize_actors,
        num_cpus=resources.pop("CPU", 1),
        num_gpus=resources.pop("GPU", 0),
        resources=resources or None,
    )
    parts = sorted(coded.iter_rows(), key=lambda row: int(row["start"]))
    codes = np.concatenate([p["codes"] for p in parts])
    return codes, (np.concatenate([p["distances"] for p in parts]) if sinkhorn else None)


def retokenize(cfg: DictConfig, tokenizer_dir: Path, vectors_path: Path, out_dir: Path) -> Path:
    """The `tokenizer.tables` newest kept checkpoints' ID tables of the items in
    `vectors_path`, in `out_dir` (table 0: the final epoch's). Reused when checkpoints and
    vectors are unchanged; a catalogue that grew at its end only codes its new rows."""
    checkpoints = kept_checkpoints(items_checkpoints(tokenizer_dir), cfg.tokenizer.tables)
    key = fingerprint(
        [file_digest(p) for p in checkpoints],
        file_digest(vectors_path),
        to_plain(cfg.tokenizer),
    )
    if made_with(out_dir / TABLES_INDEX, key):
        log.info("retokenize: reusing %s (fingerprint %s)", out_dir, key)
        return out_dir
    vectors = load_vectors(vectors_path)
    existing = existing_tables(out_dir, vectors, checkpoints)
    start = existing.rows if existing else 0
    started = time.perf_counter()
    with ray_session(cfg.cluster):
        codes, distances = pool_codes(checkpoints, vectors_path, start, len(vectors), cfg)
    seconds = time.perf_counter() - started
    tables = resolve_tables(codes, distances, cfg.tokenizer, existing)
    provenance = {"fingerprint": key, "vectors": str(vectors_path), "config": to_plain(cfg)}
    write_tables(out_dir, checkpoints, vectors, codes, tables, existing, provenance)
    log.info(
        "retokenize: %d items x %d checkpoints on %d actors in %.1f s (%d new) -> %s",
        len(vectors),
        len(checkpoints),
        cfg.cluster.retokenize_actors,
        seconds,
        len(codes),
        out_dir,
    )
    return out_dir
