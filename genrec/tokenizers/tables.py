"""Semantic-ID tables from the kept checkpoints of one tokenizer run (MTGRec's tokenizers).

Each kept checkpoint codes every item; collisions are resolved per table as for the final IDs;
the tables and an index (rows, the items' digest, each table's epoch, checkpoint digest and
collision rate) are written together, atomically. Coding is row-independent and done in fixed
blocks, so any split of the blocks over processes gives the same tables. A grown catalogue
keeps its existing IDs: only the new rows are coded, and their collisions are resolved against
the IDs already given.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from omegaconf import OmegaConf

from genrec.artifacts import KEPT_CHECKPOINTS, TABLES_INDEX
from genrec.errors import DataError
from genrec.provenance import atomic_dir, code_version, file_digest, write_json
from genrec.tokenizers.base import Tokenizer
from genrec.tokenizers.checkpoints import load_tokenizer
from genrec.tokenizers.collisions import collision_rate, extend_dedup, extend_nearest_free
from genrec.tokenizers.config import READ_SIDE_KEYS, CollisionMode, TokenizerConfig
from genrec.tokenizers.tokenize import id_table, resolve_ids

EPOCH = re.compile(r"epoch-(\d+)\.pt")


def kept_checkpoints(folder: Path, count: int) -> list[Path]:
    """The newest `count` kept checkpoints of a tokenizer run (`items/checkpoints`), newest
    first, so table 0 is the final epoch's."""
    found = sorted(Path(folder).glob("epoch-*.pt"), reverse=True)
    if len(found) < count:
        raise DataError(
            str(folder),
            f"holds {len(found)} kept tokenizer checkpoints, {count} are needed "
            "(tokenizer.tables); raise tokenizer.keep_epochs and tokenize again",
        )
    return found[:count]


def checkpoint_epoch(path: Path) -> int:
    return int(EPOCH.fullmatch(path.name).group(1))


def load_kept(path: Path, cfg: TokenizerConfig, input_dim: int) -> Tokenizer:
    """A kept checkpoint, refused when it was not made by this tokenizer config on vectors of
    this width (a foreign checkpoint would give IDs that mean something else)."""
    try:
        tok = load_tokenizer(path)
    except (OSError, RuntimeError, KeyError, EOFError) as err:
        raise DataError(str(path), f"cannot load the tokenizer checkpoint: {err}") from err
    made = tok.spec["tokenizer"]
    ours = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    differ = sorted(k for k in ours.keys() - {"device", *READ_SIDE_KEYS} if made.get(k) != ours[k])
    if differ or tok.spec["input_dim"] != input_dim:
        what = f"tokenizer keys {differ}" if differ else f"input width {tok.spec['input_dim']}"
        raise DataError(str(path), f"is a foreign checkpoint: its {what} differ from this run's")
    return tok


def encode_block(
    tokenizers: list[Tokenizer], vectors: np.ndarray, distances: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes [n, M, L] of a block under each tokenizer, and the last-level distances
    [n, M, K] when Sinkhorn will resolve collisions."""
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    codes = np.stack([tok.encode(x).numpy() for tok in tokenizers], axis=1)
    if not distances:
        return codes, None
    return codes, np.stack([tok.last_level_distances(x).numpy() for tok in tokenizers], axis=1)


def rows_digest(vectors: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()


@dataclass
class Existing:
    """Tables written before for the first `rows` items, which a grown catalogue extends."""

    rows: int
    tables: list[np.ndarray]


def existing_tables(out_dir: Path, vectors: np.ndarray, checkpoints: list[Path]) -> Existing | None:
    """The tables to extend: written by the same checkpoints for a prefix of these vectors.
    None when there are none (or they were made by other checkpoints: all are redone)."""
    index_path = Path(out_dir) / TABLES_INDEX
    if not index_path.exists():
        return None
    index = json.loads(index_path.read_text())
    digests = [file_digest(path) for path in checkpoints]
    if [t["checkpoint_sha256"] for t in index["tables"]] != digests:
        return None
    rows = index["rows"]
    if rows > len(vectors) or rows_digest(vectors[:rows]) != index["rows_sha256"]:
        raise DataError(
            str(index_path),
            f"was made for {rows} items, and the first {rows} rows of the catalogue given now "
            "are not those items; a catalogue may only grow at its end (or remove the folder "
            "to re-code every item)",
        )
    tables = [
        np.array(pq.read_table(Path(out_dir) / t["path"]).column("codes").to_pylist())
        for t in index["tables"]
    ]
    return Existing(rows, tables)


def resolve_tables(
    codes: np.ndarray,
    distances: np.ndarray | None,
    cfg: TokenizerConfig,
    existing: Existing | None,
) -> list[np.ndarray]:
    """One unique-ID table [N, L + 1] per tokenizer from codes [n, M, L] of the rows that are
    new (all rows when nothing exists)."""
    tables = []
    for m in range(codes.shape[1]):
        last = None if distances is None else distances[:, m]
        if existing is None:
            tables.append(resolve_ids(codes[:, m], last, cfg))
        elif cfg.collisions is CollisionMode.dedup:
            old = existing.tables[m]
            tables.append(np.concatenate([old, extend_dedup(old, codes[:, m])]))
        else:
            old = existing.tables[m]
            tables.append(np.concatenate([old, extend_nearest_free(old, codes[:, m], last)]))
    return tables


def write_tables(
    out_dir: Path,
    checkpoints: list[Path],
    vectors: np.ndarray,
    codes: np.ndarray,
    tables: list[np.ndarray],
    existing: Existing | None,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """The tables and their index, replacing `out_dir` at once; returns the index."""
    added = len(vectors) - (existing.rows if existing else 0)
    with atomic_dir(out_dir) as scratch:
        entries = []
        for m, (checkpoint, table) in enumerate(zip(checkpoints, tables, strict=True)):
            path = scratch / f"table-{m:02d}.parquet"
            pq.write_table(id_table(table, "item"), path)
            entries.append(
                {
                    "path": path.name,
                    "epoch": checkpoint_epoch(checkpoint),
                    "checkpoint": str(checkpoint),
                    "checkpoint_sha256": file_digest(checkpoint),
                    "sha256": file_digest(path),
                    "collision_rate_before_new": collision_rate(codes[:, m]) if added else 0.0,
                }
            )
        index = {
            "rows": len(vectors),
            "rows_sha256": rows_digest(vectors),
            "added": added,
            "tables": entries,
            **provenance,
            "code": code_version(),
        }
        write_json(scratch / TABLES_INDEX, index)
    return index


def serial_codes(
    checkpoints: list[Path], vectors: np.ndarray, cfg: TokenizerConfig, block: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The pool's work done in this process, block by block (the reference it must equal)."""
    tokenizers = [load_kept(path, cfg, vectors.shape[1]) for path in checkpoints]
    sinkhorn = cfg.collisions is CollisionMode.sinkhorn
    starts = range(0, len(vectors), block)
    parts = [encode_block(tokenizers, vectors[s : s + block], sinkhorn) for s in starts]
    codes = np.concatenate([c for c, _ in parts])
    return codes, (np.concatenate([d for _, d in parts]) if sinkhorn else None)


def items_checkpoints(tokenizer_dir: Path) -> Path:
    return Path(tokenizer_dir) / "items" / KEPT_CHECKPOINTS
