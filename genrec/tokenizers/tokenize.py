"""`genrec tokenize`: fit a tokenizer on item vectors and write the semantic-ID table.

Outputs under the stage folder: `report.json`, and `items/` (for MQ also `users/`) holding
`semantic_ids.parquet` (id, codes incl. the dedup code), `tokenizer.pt`,
`checkpoints/epoch-*.pt` (the kept epochs: the last `tokenizer.keep_epochs`, `keep_every`
apart; MTGRec's related tokenizers) and TensorBoard curves in `tb/`. The report gives, for each
pair of adjacent kept epochs, the share of items whose first code and whose whole ID changed.
Reused when inputs and config are unchanged.
"""

import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from genrec.artifacts import (
    KEPT_CHECKPOINTS,
    SEMANTIC_IDS,
    TOKENIZER_CHECKPOINT,
    TOKENIZER_REPORT,
)
from genrec.errors import ConfigError, DataError
from genrec.provenance import (
    atomic_dir,
    code_version,
    file_digest,
    fingerprint,
    made_with,
    to_plain,
    write_json,
)
from genrec.tokenizers.base import Tokenizer
from genrec.tokenizers.checkpoints import build_tokenizer, save_tokenizer
from genrec.tokenizers.collisions import collision_rate, dedup_codes, sinkhorn_resolve
from genrec.tokenizers.config import (
    READ_SIDE_KEYS,
    CollisionMode,
    TokenizerConfig,
    catalogue_codebook_size,
    is_kept,
)
from genrec.tokenizers.report import code_report, usage_collapse_levels

log = logging.getLogger(__name__)


def tokenizer_input(tokenizer_dir: Path) -> Path:
    """The item vectors a `genrec tokenize` run read: its report names them, relative to the
    run folder (or absolute)."""
    report = tokenizer_dir / TOKENIZER_REPORT
    try:
        path = tokenizer_dir.parent / json.loads(report.read_text())["inputs"]["items"]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(str(report), f"cannot tell which item vectors it read: {err}") from err
    if not path.exists():
        raise DataError(
            str(report),
            f"names item vectors {path} that are not there; move them back, or delete "
            f"{tokenizer_dir} to tokenize again",
        )
    return path


def load_vectors(path: Path, expected_rows: int | None = None) -> np.ndarray:
    """Item (or user) vectors as float32 [N, D], checked for shape and finite values."""
    try:
        vectors = np.load(path)
    except (OSError, ValueError) as err:
        raise DataError(str(path), f"cannot read vectors: {err}") from err
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise DataError(
            str(path), f"expected a non-empty [items, dim] matrix, got shape {vectors.shape}"
        )
    if expected_rows is not None and vectors.shape[0] != expected_rows:
        raise DataError(
            str(path), f"has {vectors.shape[0]} rows but the dataset has {expected_rows} items"
        )
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise DataError(
            str(path), f"row {int(np.flatnonzero(bad)[0])} holds NaN or infinite values"
        )
    return vectors.astype(np.float32, copy=False)


def sized(cfg: DictConfig, rows: int) -> DictConfig:
    """The tokenizer's config with its codebook sized to `rows` where unset (the data stage
    has sized it already on a run's own path); a size that is set must fit the rows."""
    size = cfg.tokenizer.codebook_size
    if size is None:
        return OmegaConf.merge(cfg.tokenizer, {"codebook_size": catalogue_codebook_size(rows)})
    if size > rows:
        raise ConfigError(
            f"config key 'tokenizer.codebook_size' ({size}) is larger than "
            f"the number of items to tokenize ({rows})"
        )
    return cfg.tokenizer


class _EpochLog:
    """Per-epoch TensorBoard curves and code usage; checkpoints and codes of the kept epochs."""

    def __init__(self, out: Path, vectors: torch.Tensor, cfg: TokenizerConfig):
        self.writer = SummaryWriter(str(out / "tb"))
        self.folder = out / KEPT_CHECKPOINTS
        self.folder.mkdir()
        self.vectors, self.cfg = vectors, cfg
        self.kept: list[tuple[int, np.ndarray]] = []

    def __call__(self, epoch: int, tok: Tokenizer, logs: dict[str, float]) -> None:
        codes = tok.encode(self.vectors).numpy()
        for name, value in logs.items():
            self.writer.add_scalar(f"train/{name}", value, epoch)
        for level in range(codes.shape[1]):
            used = np.unique(codes[:, level]).size / self.cfg.codebook_size
            self.writer.add_scalar(f"usage/level_{level}", used, epoch)
        self.writer.add_scalar("collision_rate", collision_rate(codes), epoch)
        if is_kept(self.cfg, epoch):
            save_tokenizer(tok, self.folder / f"epoch-{epoch:05d}.pt")
            self.kept.append((epoch, codes))

    def adjacent_changes(self) -> list[dict[str, Any]]:
        """For each pair of adjacent kept epochs, the share of items whose first code, and
        whose codes as a whole, differ."""
        return [
            {
                "epochs": [a, b],
                "first_code": float((x[:, 0] != y[:, 0]).mean()),
                "id": float((x != y).any(axis=1).mean()),
            }
            for (a, x), (b, y) in itertools.pairwise(self.kept)
        ]


def resolve_ids(
    codes: np.ndarray, last_distances: np.ndarray | None, cfg: TokenizerConfig
) -> np.ndarray:
    """Unique IDs: TIGER's extra dedup code, or LETTER's Sinkhorn re-assignment (+ a zero code);
    `last_distances` [N, K] are only needed for Sinkhorn."""
    if cfg.collisions is CollisionMode.dedup:
        return dedup_codes(codes)
    try:
        resolved = sinkhorn_resolve(
            codes, last_distances, epsilon=cfg.sinkhorn_epsilon, iters=cfg.sinkhorn_iters
        )
    except ValueError as err:
        raise ConfigError(f"config key 'tokenizer.collisions': {err}") from err
    return np.concatenate([resolved, np.zeros((len(resolved), 1), dtype=resolved.dtype)], axis=1)


def id_table(ids: np.ndarray, id_column: str) -> pa.Table:
    flat = pa.array(ids.astype(np.int32).ravel())
    offsets = pa.array(np.arange(0, ids.size + 1, ids.shape[1], dtype=np.int32))
    return pa.table(
        {
            id_column: pa.array(np.arange(len(ids), dtype=np.int32)),
            "codes": pa.ListArray.from_arrays(offsets, flat),
        }
    )


def id_table_bytes(ids: np.ndarray, id_column: str) -> bytes:
    """The table as the bytes of its Parquet file: one content, one digest."""
    sink = pa.BufferOutputStream()
    pq.write_table(id_table(ids, id_column), sink)
    return sink.getvalue().to_pybytes()


def fit_and_tokenize(
    cfg: DictConfig,
    vectors: np.ndarray,
    cf: np.ndarray | None,
    out: Path,
    id_column: str,
    unseen: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit one tokenizer in the new folder `out` and write its ID table (the `unseen` rows,
    coded but not fitted on, after the others); returns its report."""
    out.mkdir()
    settings = sized(cfg, len(vectors))
    x = torch.from_numpy(vectors)
    cf_tensor = None if cf is None else torch.from_numpy(cf)
    tok = build_tokenizer(settings, x.shape[1], cfg.seed, None if cf is None else cf.shape[1])
    epochs = _EpochLog(out, x, settings)
    started = time.perf_counter()
    tok.fit(x, cf_tensor, epochs)
    fit_seconds = time.perf_counter() - started
    epochs.writer.close()
    save_tokenizer(tok, out / TOKENIZER_CHECKPOINT)
    if unseen is not None:
        x = torch.cat([x, torch.from_numpy(unseen)])
    started = time.perf_counter()
    codes = tok.encode(x).numpy()
    encode_seconds = time.perf_counter() - started
    sinkhorn = cfg.tokenizer.collisions is CollisionMode.sinkhorn
    distances = tok.last_level_distances(x).numpy() if sinkhorn else None
    ids = resolve_ids(codes, distances, cfg.tokenizer)
    pq.write_table(id_table(ids, id_column), out / SEMANTIC_IDS)
    report = code_report(codes, settings.codebook_size)
    collapsed = usage_collapse_levels(report, cfg.tokenizer.collapse_warning_usage)
    if collapsed:
        log.warning(
            "tokenizer: code usage collapsed on level(s) %s (below %.0f%% of the codebook)",
            collapsed,
            100 * cfg.tokenizer.collapse_warning_usage,
        )
    report.update(
        {
            "collision_rate_before": collision_rate(codes),
            "collision_rate_after": collision_rate(ids),
            "reconstruction_error": tok.reconstruction_error(x[: len(vectors)]),
            "unseen": 0 if unseen is None else len(unseen),
            "adjacent_epoch_changes": epochs.adjacent_changes(),
            "collapsed_levels": collapsed,
            "num": len(ids),
            "fit_seconds": round(fit_seconds, 3),
            "encode_per_second": round(len(ids) / max(encode_seconds, 1e-9), 1),
        }
    )
    return report


def run_relative(path: Path, run_dir: Path) -> str:
    """A path as the report records it: relative to the run folder when inside it (Ray workers
    run elsewhere, and the folder may move), else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path(run_dir).absolute()))
    except ValueError:
        return str(path)


def tokenize(
    cfg: DictConfig, data_fingerprint: str, inputs: dict[str, Path], out_dir: Path
) -> Path:
    """Tokenize items (and, for MQ, users) from the vector files in `inputs`.

    `inputs` maps "items" (required), "cf" (LETTER), "users" (MQ) and "unseen_users" (MQ:
    users kept out of training, coded by the tokenizer fitted on the others) to .npy files.
    """
    key = fingerprint(
        data_fingerprint,
        {k: v for k, v in to_plain(cfg.tokenizer).items() if k not in READ_SIDE_KEYS},
        cfg.seed,
        {name: file_digest(path) for name, path in sorted(inputs.items())},
    )
    if made_with(out_dir / TOKENIZER_REPORT, key):
        log.info("tokenize: reusing %s (fingerprint %s)", out_dir, key)
        return out_dir
    vectors = load_vectors(inputs["items"])
    cf = load_vectors(inputs["cf"], len(vectors)) if "cf" in inputs else None
    with atomic_dir(out_dir) as scratch:
        report = {"items": fit_and_tokenize(cfg, vectors, cf, scratch / "items", "item")}
        if "users" in inputs:
            users = load_vectors(inputs["users"])
            unseen = load_vectors(inputs["unseen_users"]) if "unseen_users" in inputs else None
            report["users"] = fit_and_tokenize(cfg, users, None, scratch / "users", "user", unseen)
        report.update(
            {
                "fingerprint": key,
                "inputs": {k: run_relative(v, out_dir.parent) for k, v in inputs.items()},
                "config": to_plain(cfg),
                "code": code_version(),
            }
        )
        write_json(scratch / TOKENIZER_REPORT, report)
    log.info(
        "tokenize: %s",
        json.dumps(
            {
                k: report["items"][k]
                for k in ("collision_rate_before", "collision_rate_after", "reconstruction_error")
            }
        ),
    )
    return out_dir
