"""Recommendations from a trained run: each user's top-k items after everything it did
(`genrec recommend`, to Parquet), or after given histories (`genrec.load(run_dir)`).

A run is read as it stands, nothing is trained or recomputed: its final model (fine-tuned
where the method fine-tunes, else trained) and the semantic-ID tables it was trained on,
found in the run folder by the digests the model records.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from genrec.artifacts import DATA, FINETUNE, KEPT_TABLES, MODEL, TOKENIZER, TRAIN
from genrec.config import config_from_dict
from genrec.data_pipeline.prepared import EvalSet, latest_histories
from genrec.errors import ConfigError, DataError
from genrec.methods import method_spec
from genrec.provenance import atomic_file, file_digest
from genrec.trainer.engine import resolve_device
from genrec.trainer.evaluate import RankingModel, batch_rows, load_ranking_model

FINAL_MODELS = (f"{FINETUNE}/{MODEL}", f"{TRAIN}/{MODEL}")
# Where a run's semantic-ID tables are: the tokenizer's, the kept checkpoints', learned ones.
TABLE_STAGES = (TOKENIZER, KEPT_TABLES, TRAIN)


def final_model(run_dir: Path) -> Path:
    """The model a run ends with: fine-tuned where it was, else trained."""
    for name in FINAL_MODELS:
        if (run_dir / name).is_file():
            return run_dir / name
    raise DataError(
        str(run_dir / FINAL_MODELS[-1]), "no trained model in this run folder: run genrec train"
    )


def trained_tables(run_dir: Path, checkpoint: Path) -> list[Path]:
    """The ID tables `checkpoint` was trained on, in its order, found in the run folder."""
    wanted = torch.load(checkpoint, map_location="cpu", weights_only=True)["semantic_ids"]
    found: dict[str, Path] = {}
    for stage in TABLE_STAGES:
        for path in sorted((run_dir / stage).rglob("*.parquet")):
            found.setdefault(file_digest(path), path)
    missing = [digest for digest in wanted if digest not in found]
    if missing:
        raise DataError(
            str(checkpoint),
            f"was trained on {len(wanted)} semantic-ID tables, {len(missing)} of which are not "
            f"in {run_dir} any more (digest {missing[0][:12]}); tokenize again",
        )
    return [found[digest] for digest in wanted]


def _raw_ids(data_dir: Path, entity: str) -> np.ndarray:
    return pq.read_table(data_dir / f"{entity}.parquet", columns=["raw_id"])["raw_id"].to_numpy(
        zero_copy_only=False
    )


def read_user_file(path: Path) -> np.ndarray:
    """Raw user ids: a Parquet or CSV file's `user` column, or a text file of one id a line."""
    try:
        if path.suffix == ".parquet":
            column = pq.read_table(path, columns=["user"])["user"]
        elif path.suffix in (".csv", ".tsv"):
            options = pacsv.ParseOptions(delimiter="\t" if path.suffix == ".tsv" else ",")
            column = pacsv.read_csv(path, parse_options=options)["user"]
        else:
            lines = path.read_text().split()
            column = pa.array(lines)
    except (OSError, KeyError, pa.ArrowException) as err:
        raise DataError(str(path), f"cannot read user ids (a `user` column): {err}") from err
    return column.to_numpy(zero_copy_only=False)


@dataclass
class Recommender:
    """A trained run ready to recommend: `recommend(histories, k)` on raw item ids."""

    cfg: Any  # the run's config
    ranking: RankingModel
    checkpoint: Path
    tables: list[Path]
    data_dir: Path
    item_ids: np.ndarray  # raw id of each item

    def __post_init__(self) -> None:
        self.item_index = {raw: i for i, raw in enumerate(self.item_ids.tolist())}

    def check_k(self, k: int, key: str = "k") -> None:
        if not 1 <= k <= self.item_ids.size:
            raise ConfigError(
                f"config key '{key}' ({k}) must be between 1 and the catalogue's "
                f"{self.item_ids.size} items"
            )

    def histories(self, histories: list[list[Any]], users: list[int] | None = None) -> EvalSet:
        """Raw item histories (oldest first) as a split of internal ids, each cut to its
        newest `data.max_history` items, as training cut them."""
        rows = []
        for row, history in enumerate(histories):
            if not len(history):
                raise ValueError(f"history {row} is empty: there is nothing to recommend from")
            unknown = [item for item in history if item not in self.item_index]
            if unknown:
                raise ValueError(f"history {row}: item {unknown[0]!r} is not in the catalogue")
            newest = history[-self.cfg.data.max_history :]
            rows.append([self.item_index[item] for item in newest])
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if rows else lengths
        ids = np.zeros(len(rows), dtype=np.int64) if users is None else np.asarray(users)
        return EvalSet("given", ids, offsets, flat, np.full(len(rows), -1, dtype=np.int64))

    def top_k(self, split: EvalSet, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, scores) [users, k] of a split's users, in this process, in row order."""
        size = self.cfg.evaluate.batch_size
        batches = batch_rows(split.users.size, size)
        bar = tqdm(batches, total=-(-split.users.size // size), desc="recommend", unit="batch")
        parts = [self.ranking.top_k(split, rows, k) for rows in bar]
        if not parts:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def recommend(
        self, histories: list[list[Any]], k: int = 10, users: list[int] | None = None
    ) -> list[list[tuple[Any, float]]]:
        """Each history's top-k (raw item id, score), best first; `users` are the internal
        user ids where the model reads user tokens."""
        self.check_k(k)
        items, scores = self.top_k(self.histories(histories, users), k)
        out = []
        for row_items, row_scores in zip(items, scores, strict=True):
            kept = row_items >= 0
            raw = self.item_ids[row_items[kept]].tolist()
            out.append(list(zip(raw, row_scores[kept].tolist(), strict=True)))
        return out

    def table(self, split: EvalSet, items: np.ndarray, scores: np.ndarray) -> pa.Table:
        """One row per (user, place): raw user id, rank (1 = best), raw item id, score."""
        k, kept = items.shape[1], items >= 0
        users = np.repeat(split.users, k).reshape(-1, k)
        return pa.table(
            {
                "user": _raw_ids(self.data_dir, "users")[users[kept]],
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), (len(items), 1))[kept],
                "item": self.item_ids[items[kept]],
                "score": scores[kept].astype(np.float32),
            }
        )


def load(run_dir: str | Path, device: str | None = None) -> Recommender:
    """The trained run in `run_dir`, ready to recommend (on `device`, default the run's)."""
    run_dir = Path(run_dir)
    checkpoint = final_model(run_dir)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = config_from_dict({**saved["config"], "run_dir": str(run_dir)})
    tables = trained_tables(run_dir, checkpoint)
    data_dir = run_dir / DATA
    item_ids = _raw_ids(data_dir, "items")
    target = resolve_device(device or cfg.trainer.device)
    method = method_spec(cfg.method)
    ranking = load_ranking_model(cfg, method, checkpoint, tables, item_ids.size, target)
    return Recommender(cfg, ranking, checkpoint, tables, data_dir, item_ids)


def users_to_rank(recommender: Recommender, users_file: str | None) -> EvalSet:
    """Every user's latest histories, or those of the users a file names (raw ids)."""
    latest = latest_histories(recommender.data_dir, recommender.cfg.data.max_history)
    if users_file is None:
        return latest
    path = Path(users_file)
    wanted = read_user_file(path)
    user_ids = _raw_ids(recommender.data_dir, "users")
    index = {raw: i for i, raw in enumerate(user_ids.tolist())}
    as_str = {str(raw): i for raw, i in index.items()}
    rows = []
    for line, raw in enumerate(wanted.tolist(), start=1):
        user = index.get(raw, as_str.get(str(raw)))
        if user is None:
            raise DataError(f"{path}:{line}", f"user {raw!r} is not in the prepared data")
        rows.append(user)
    position = np.full(user_ids.size, -1, dtype=np.int64)
    position[latest.users] = np.arange(latest.users.size)
    return latest.take(position[np.asarray(rows, dtype=np.int64)])


def write_recommendations(
    recommender: Recommender, split: EvalSet, items: np.ndarray, scores: np.ndarray, out: Path
) -> Path:
    with atomic_file(out) as tmp:
        pq.write_table(recommender.table(split, items, scores), tmp)
    return out
