"""Item text embeddings: one vector per item from its text columns, for the semantic-id tokenizers.

`embeddings.npy` row i is item i. The output is keyed by a content hash of the data and the
settings that change the vectors, so `genrec features` reruns are free when nothing changed.
"""

import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig

from genrec.artifacts import EMBEDDINGS, MANIFEST, META
from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.text_model import encode_texts, load_text_model
from genrec.errors import DataError
from genrec.provenance import atomic_dir, code_version, fingerprint, to_plain, write_json

# Bump when item_texts() changes what text an item gets: cached vectors then go stale.
TEMPLATE_VERSION = 1

log = logging.getLogger(__name__)


def _clean(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _joined_texts(items: pa.Table, text_columns: list[str]) -> list[str]:
    """Each item's non-empty "column: value" parts joined by "; ", or "" when it has none."""
    columns = [(name, items.column(name).to_pylist()) for name in text_columns]
    return [
        "; ".join(f"{name}: {text}" for name, values in columns if (text := _clean(values[row])))
        for row in range(items.num_rows)
    ]


def _with_fallback(joined: list[str], raw_ids: list[Any]) -> list[str]:
    """Textless items get their raw id, so they do not all collapse onto one vector."""
    return [text or f"item {raw_id}" for text, raw_id in zip(joined, raw_ids, strict=True)]


def item_texts(items: pa.Table, text_columns: list[str]) -> list[str]:
    """The text each item is embedded from, in item order."""
    return _with_fallback(_joined_texts(items, text_columns), items.column("raw_id").to_pylist())


def _read_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest, checked for the keys this stage relies on."""
    path = data_dir / MANIFEST
    manifest = load_manifest(data_dir)
    if not isinstance(manifest.get("fingerprint"), str):
        raise DataError(str(path), "key 'fingerprint' is missing or not a string")
    if not isinstance(manifest.get("text_columns", []), list):
        raise DataError(str(path), "key 'text_columns' must be a list of column names")
    return manifest


def _read_items(data_dir: Path, text_columns: list[str]) -> pa.Table:
    """The item table, checked so that row i really is item i."""
    path = data_dir / "items.parquet"
    try:
        items = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise DataError(str(path), f"cannot read the item table: {err}") from err
    for name in ["item", "raw_id", *text_columns]:
        if name not in items.column_names:
            raise DataError(str(path), f"column '{name}' is missing (has {items.column_names})")
    if items.num_rows == 0:
        raise DataError(str(path), "the item table is empty: there is nothing to embed")
    ids = items.column("item").to_numpy()
    if not np.array_equal(ids, np.arange(items.num_rows)):
        raise DataError(str(path), "column 'item' must be 0..num_items-1 in order")
    return items


def _is_cached(out_dir: Path, key: str) -> bool:
    meta_path = out_dir / META
    if not (meta_path.is_file() and (out_dir / EMBEDDINGS).is_file()):
        return False
    try:
        return json.loads(meta_path.read_text()).get("fingerprint") == key
    except (OSError, json.JSONDecodeError):
        return False


def embeddings_fingerprint(data_fingerprint: str, text_model: str, normalize: bool) -> str:
    """Everything that changes the vectors; batch size and device do not."""
    return fingerprint(data_fingerprint, text_model, normalize, TEMPLATE_VERSION)


def embed_items(
    cfg: DictConfig,
    data_dir: Path,
    out_dir: Path,
    on_ray: Callable[[], AbstractContextManager] | None = None,
) -> Path:
    """Write out_dir/embeddings.npy and meta.json for the prepared dataset in data_dir.

    Reuses an existing output with the same fingerprint; a failure leaves the previous one
    intact. With `cluster.text_actors` > 0 a Ray actor pool encodes, inside `on_ray()`.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    features = cfg.features
    manifest = _read_manifest(data_dir)
    key = embeddings_fingerprint(manifest["fingerprint"], features.text_model, features.normalize)
    if _is_cached(out_dir, key):
        log.info("text embeddings: reused %s (fingerprint %s)", out_dir, key)
        return out_dir

    text_columns = list(manifest.get("text_columns", []))
    items = _read_items(data_dir, text_columns)
    joined = _joined_texts(items, text_columns)
    texts = _with_fallback(joined, items.column("raw_id").to_pylist())
    torch.manual_seed(cfg.seed)
    if cfg.cluster.text_actors:
        from genrec.data_pipeline.ray_text import encode_on_ray

        with on_ray() if on_ray else nullcontext():
            vectors = encode_on_ray(cfg, texts)
    else:
        model = load_text_model(features.text_model, features.device)
        vectors = encode_texts(model, texts, features.batch_size, features.normalize)
    meta = {
        "model": features.text_model,
        "dim": int(vectors.shape[1]),
        "num_items": len(texts),
        "items_without_text": joined.count(""),
        "normalize": bool(features.normalize),
        "actors": cfg.cluster.text_actors,
        "template_version": TEMPLATE_VERSION,
        "fingerprint": key,
        "data_fingerprint": manifest["fingerprint"],
        "config": to_plain(cfg),
        "code": code_version(),
    }
    with atomic_dir(out_dir) as scratch:
        np.save(scratch / EMBEDDINGS, vectors)
        write_json(scratch / META, meta)
    log.info(
        "text embeddings: %d items x %d dims (%d without text) -> %s",
        meta["num_items"],
        meta["dim"],
        meta["items_without_text"],
        out_dir,
    )
    return out_dir
