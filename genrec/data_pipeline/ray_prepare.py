"""`genrec prepare` on Ray: a log of many files read in parallel across the cluster, and no
process holding the log, only a file, a block, or arrays over users and items.

The steps are the one-process prepare's, so on the same input and config the dataset is the
same (ids, splits, shard contents):
1. read: a Ray task per file, with the one-process reader, so a bad row names file and line
   (the synthetic log is first written as Parquet files, a task per chunk of users);
2. ids: each file's distinct users and items, merged by tasks into sorted vocabularies;
3. k-core: each round every file counts its rows whose user and item still pass, and the
   driver sums the counts (a shuffle per round would move the whole log; these move counts);
4. order: Ray Data sorts the surviving rows by (user, time, row), with its own shuffle and
   spilling;
5. sequences and splits: the driver streams the sorted rows once, writing them user by user;
6. shards: Ray Data groups the training sequences by shard (`map_groups`), a worker writing
   each shard.
"""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from omegaconf import DictConfig, OmegaConf
from ray.data import DataContext
from ray.data.context import ShuffleStrategy
from tqdm import tqdm

from genrec.data_pipeline.config import DataConfig, DataFormat
from genrec.data_pipeline.dataset_tables import (
    Prepared,
    log_filtered,
    write_item_and_user_tables,
)
from genrec.data_pipeline.preprocess import (
    FilterStats,
    dense_ids,
    ragged_gather,
    sorted_unique,
)
from genrec.data_pipeline.readers.files import log_files
from genrec.data_pipeline.readers.item_text import optional_item_table
from genrec.data_pipeline.readers.synthetic import (
    build_catalog,
    chunk_starts,
    generate_chunk,
    item_table,
)
from genrec.data_pipeline.readers.tabular_log import read_log_part
from genrec.data_pipeline.shards import key_digits, shard_chunks, write_shard
from genrec.data_pipeline.split import eval_split, held_out
from genrec.errors import DataError
from genrec.provenance import atomic_dir

log = logging.getLogger(__name__)

ROW_BITS = 40  # a row's key: its file's index in the high bits, its row in the file below
FAN_IN = 8  # vocabularies merged per task
STREAM_ROWS = 1 << 20  # sorted rows the driver takes at a time


@dataclass(frozen=True)
class Part:
    """One file's rows, in the object store, and what the driver learns of them."""

    table: ray.ObjectRef
    rows: int
    skipped: int
    int_users: bool
    int_items: bool
    int_times: bool


@ray.remote(num_returns=2)
def _read(path: str, index: int, data: DataConfig) -> tuple[pa.Table, dict[str, Any]]:
    part = read_log_part(Path(path), data)
    rows = np.arange(len(part.users), dtype=np.int64) + (index << ROW_BITS)
    table = pa.table({"user": part.users, "item": part.items, "time": part.times, "row": rows})
    facts = {
        "rows": len(rows),
        "skipped": part.skipped,
        "int_users": pa.types.is_integer(part.users.type),
        "int_items": pa.types.is_integer(part.items.type),
        "int_times": part.times.dtype == np.int64,
    }
    return table, facts


def _read_parts(files: list[Path], data: DataConfig) -> list[Part]:
    refs = [_read.remote(str(path), index, data) for index, path in enumerate(files)]
    facts = []
    with tqdm(total=len(refs), desc="read", unit="file", leave=False) as bar:
        for _, fact in refs:  # in file order: the first bad file is the one reported
            facts.append(ray.get(fact))
            bar.update()
    return [Part(table, **fact) for (table, _), fact in zip(refs, facts, strict=True)]


def _typed(values: pa.ChunkedArray, as_string: bool) -> pa.Array:
    """Ids in the log's one type: strings where some file's are not integers."""
    values = values.combine_chunks()
    return pc.cast(values, pa.string()) if as_string else values


@ray.remote(num_returns=2)
def _distinct(table: pa.Table, str_users: bool, str_items: bool) -> tuple[pa.Array, pa.Array]:
    users = sorted_unique([_typed(table["user"], str_users)])
    return users, sorted_unique([_typed(table["item"], str_items)])


@ray.remote
def _merge(*vocabularies: pa.Array) -> pa.Array:
    return sorted_unique(list(vocabularies))


def _merged(refs: list[ray.ObjectRef]) -> pa.Array:
    """One sorted vocabulary from many, merged FAN_IN at a time by tasks."""
    while len(refs) > 1:
        refs = [_merge.remote(*refs[i : i + FAN_IN]) for i in range(0, len(refs), FAN_IN)]
    return ray.get(refs[0])


def _codes(values: pa.Array, vocab: pa.Array) -> np.ndarray:
    """Positions of `values` in the sorted `vocab`: a binary search for integers, a hash
    lookup for strings."""
    if pa.types.is_integer(vocab.type):
        return np.searchsorted(vocab.to_numpy(), values.to_numpy()).astype(np.int32)
    return pc.index_in(values, value_set=vocab).to_numpy().astype(np.int32)


def _counted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(values, return_counts=True)


@ray.remote(num_returns=2)
def _encode(
    table: pa.Table,
    users: pa.Array,
    items: pa.Array,
    str_users: bool,
    str_items: bool,
    float_times: bool,
) -> tuple[pa.Table, tuple]:
    """The file's rows with contiguous ids, and how often each user and item occurs."""
    user = _codes(_typed(table["user"], str_users), users)
    item = _codes(_typed(table["item"], str_items), items)
    time = table["time"].to_numpy()
    coded = pa.table(
        {
            "user": user,
            "item": item,
            "time": time.astype(np.float64) if float_times else time,
            "row": table["row"],
        }
    )
    return coded, (_counted(user), _counted(item))


@ray.remote
def _alive_counts(table: pa.Table, user_ok: np.ndarray, item_ok: np.ndarray) -> tuple:
    """How often each user and item occurs in the rows that pass this k-core round."""
    user, item = table["user"].to_numpy(), table["item"].to_numpy()
    alive = user_ok[user] & item_ok[item]
    return _counted(user[alive]), _counted(item[alive])


def _sum_counts(refs: list[ray.ObjectRef], users: int, items: int) -> tuple[np.ndarray, ...]:
    """Per-file counts summed into arrays over all users and items, one file at a time."""
    user_count, item_count = np.zeros(users, np.int64), np.zeros(items, np.int64)
    for ref in refs:
        (u, cu), (i, ci) = ray.get(ref)
        user_count[u] += cu
        item_count[i] += ci
    return user_count, item_count


def _k_core(
    coded: list[ray.ObjectRef], counts: list[ray.ObjectRef], sizes: tuple[int, int], data: Any
) -> tuple[np.ndarray, np.ndarray, int]:
    """Final per-user and per-item counts of the surviving rows, and the rounds taken.

    Counts only fall, so a row that fails a round fails every later one: a round's survivors
    are the rows whose user and item pass the previous round's counts, and it is done when
    those counts are the previous ones.
    """
    user_count, item_count = _sum_counts(counts, *sizes)
    rounds = 0
    while True:
        rounds += 1
        user_ok = ray.put(user_count >= data.min_user_interactions)
        item_ok = ray.put(item_count >= data.min_item_interactions)
        refs = [_alive_counts.remote(table, user_ok, item_ok) for table in coded]
        new_user, new_item = _sum_counts(refs, *sizes)
        if np.array_equal(new_user, user_count) and np.array_equal(new_item, item_count):
            return user_count, item_count, rounds
        user_count, item_count = new_user, new_item


@ray.remote
def _final_rows(
    table: pa.Table,
    user_ok: np.ndarray,
    item_ok: np.ndarray,
    user_id: np.ndarray,
    item_id: np.ndarray,
) -> pa.Table:
    """The surviving rows, with the dataset's user ids (trained users first) and item ids."""
    user, item = table["user"].to_numpy(), table["item"].to_numpy()
    keep = np.flatnonzero(user_ok[user] & item_ok[item])
    return pa.table(
        {
            "user": user_id[user[keep]],
            "item": item_id[item[keep]],
            "time": table["time"].to_numpy()[keep],
            "row": table["row"].to_numpy()[keep],
        }
    )


class _SplitWriters:
    """sequences, valid, test and holdout tables, written as the sorted rows stream past."""

    def __init__(
        self, out: Path, trained: int, max_history: int, large: bool, shards: "_ShardPlan"
    ) -> None:
        self.trained, self.max_history, self.shards = trained, max_history, shards
        self.train_parts: list[ray.ObjectRef] = []  # users' training rows, for the shards
        items = pa.large_list(pa.int32()) if large else pa.list_(pa.int32())
        split = pa.schema({"user": pa.int32(), "history": items, "target": pa.int32()})
        schemas = {"sequences": pa.schema({"user": pa.int32(), "items": items})}
        schemas |= {name: split for name in ("valid", "test", "holdout")}
        self.writers = {
            name: pq.ParquetWriter(out / f"{name}.parquet", schema, use_dictionary=False)
            for name, schema in schemas.items()
        }
        self.list_type = items

    def add(self, users: np.ndarray, items: np.ndarray) -> None:
        """Whole users' rows, sorted by user, then time."""
        ids, starts = np.unique(users, return_index=True)
        offsets = np.append(starts, users.size).astype(np.int64)
        cut = int(np.searchsorted(ids, self.trained))
        if cut:
            trained = offsets[: cut + 1]
            sequence = items[: trained[-1]]
            self._write("sequences", {"user": ids[:cut], "items": self._lists(trained, sequence)})
            for name, holdout in (("valid", 2), ("test", 1)):
                self._split(name, trained, sequence, holdout, int(ids[0]))
            self.train_parts.append(ray.put(self.shards.rows(ids[:cut], trained, sequence)))
        if cut < ids.size:
            held = offsets[cut:] - offsets[cut]
            self._split("holdout", held, items[offsets[cut] :], 1, int(ids[cut]))

    def _lists(self, offsets: np.ndarray, values: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values).cast(
            self.list_type
        )

    def _split(
        self, name: str, offsets: np.ndarray, items: np.ndarray, holdout: int, first: int
    ) -> None:
        split = eval_split(offsets, items, holdout, self.max_history, first)
        self._write(
            name,
            {
                "user": split.users.astype(np.int32),
                "history": self._lists(split.offsets, split.history),
                "target": split.targets.astype(np.int32),
            },
        )

    def _write(self, name: str, columns: dict[str, Any]) -> None:
        writer = self.writers[name]
        writer.write_table(pa.table(columns, schema=writer.schema))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _stream_sorted(rows: ray.data.Dataset, writers: _SplitWriters, total: int) -> None:
    """Feeds the writers whole users: the last user of a batch may go on in the next one."""
    carry_users, carry_items = np.empty(0, np.int32), np.empty(0, np.int32)
    with tqdm(total=total, desc="sequences", unit="row", unit_scale=True, leave=False) as bar:
        for batch in rows.iter_batches(batch_size=STREAM_ROWS, batch_format="numpy"):
            users = np.concatenate([carry_users, batch["user"]])
            items = np.concatenate([carry_items, batch["item"]])
            whole = int(np.searchsorted(users, users[-1]))
            if whole:
                writers.add(users[:whole], items[:whole])
            carry_users, carry_items = users[whole:], items[whole:]
            bar.update(batch["user"].size)
    if carry_users.size:
        writers.add(carry_users, carry_items)


@dataclass(frozen=True)
class _ShardPlan:
    """Which shard each trained user goes to, and where in it: the one-process prepare's
    seeded shuffle, known from the users' lengths before any sequence is seen."""

    position: np.ndarray  # each user's place in the shuffled order; -1: no training item
    users_per_shard: int
    count: int
    digits: int

    @classmethod
    def of(cls, lengths: np.ndarray, users_per_shard: int, seed: int) -> "_ShardPlan":
        chunks = shard_chunks(lengths > 2, users_per_shard, seed)
        order = np.concatenate(chunks)
        position = np.full(lengths.size, -1, np.int64)
        position[order] = np.arange(order.size)
        return cls(position, users_per_shard, len(chunks), key_digits(lengths.size))

    def rows(self, users: np.ndarray, offsets: np.ndarray, items: np.ndarray) -> pa.Table:
        """Users' training sequences (all but the last two items), shard and place there."""
        train, values = ragged_gather(items, offsets[:-1], offsets[1:] - 2)
        position = self.position[users]
        rows = pa.table(
            {
                "user": users,
                "position": position,
                "shard": position // self.users_per_shard,
                "items": pa.LargeListArray.from_arrays(pa.array(train), pa.array(values)),
            }
        )
        return rows.filter(pc.greater_equal(rows["position"], 0))


def _write_group(group: pa.Table, shard_dir: str, digits: int) -> pa.Table:
    """One shard's users, in their shuffled order, written as the one-process prepare would."""
    group = group.sort_by("position")
    lists = group["items"].combine_chunks()
    offsets = lists.offsets.to_numpy().astype(np.int64)
    index = int(group["shard"][0].as_py())
    path = Path(shard_dir) / f"train-{index:06d}.tar"
    keys = group["user"].to_numpy().astype(np.int64)
    entry = write_shard(path, keys, offsets - offsets[0], lists.flatten().to_numpy(), digits)
    return pa.table({"index": [index], "entry": [json.dumps(entry)]})


def _write_shards(out: Path, parts: list[ray.ObjectRef], plan: _ShardPlan) -> list[dict]:
    """The training rows grouped by shard (Ray Data's shuffle), a worker writing each shard."""
    shard_dir = out / "shards"
    shard_dir.mkdir()
    if not parts:
        none = np.zeros(0, np.int64)
        offsets = np.zeros(1, np.int64)
        return [write_shard(shard_dir / "train-000000.tar", none, offsets, none, plan.digits)]
    rows = ray.data.from_arrow_refs(parts)
    written = rows.groupby("shard", num_partitions=min(plan.count, 200)).map_groups(
        _write_group,
        batch_format="pyarrow",
        fn_kwargs={"shard_dir": str(shard_dir), "digits": plan.digits},
    )
    entries = sorted((row["index"], json.loads(row["entry"])) for row in written.take_all())
    return [entry for _, entry in entries]


def synthetic_log(cfg: DictConfig) -> tuple[DataConfig, list[Path], pa.Table]:
    """The synthetic log as Parquet files (a task per chunk of users) under `run_dir`,
    reused while its config is unchanged, read back as a log."""
    synthetic = OmegaConf.to_object(cfg.data.synthetic)
    folder = Path(cfg.run_dir) / "synthetic_log"
    record = json.dumps(OmegaConf.to_container(cfg.data.synthetic), sort_keys=True)
    starts = list(chunk_starts(synthetic))
    names = [f"part-{index:05d}.parquet" for index in range(len(starts))]
    made_with = folder / ".synthetic.json"  # hidden: the folder reads as a log
    if not made_with.is_file() or made_with.read_text() != record:
        with atomic_dir(folder) as scratch:
            catalog = ray.put(build_catalog(synthetic))
            done = [
                _synthesize.remote(synthetic, catalog, start, str(scratch / name))
                for start, name in zip(starts, names, strict=True)
            ]
            with tqdm(total=len(done), desc="synthesize", unit="file", leave=False) as bar:
                for ref in done:
                    ray.get(ref)
                    bar.update()
            (scratch / made_with.name).write_text(record)
    data = OmegaConf.to_object(cfg.data)
    data.format, data.interactions = DataFormat.log, str(folder)
    return data, [folder / n for n in names], item_table(synthetic)


@ray.remote
def _synthesize(synthetic: Any, catalog: Any, start: int, path: str) -> None:
    batch = generate_chunk(synthetic, catalog, start)
    users = batch["user"].to_numpy()
    first = np.searchsorted(users, users)  # each row's position in its user's sequence
    time = np.arange(users.size) - first
    table = pa.table({"user_id": users, "item_id": batch["item"], "timestamp": time})
    pq.write_table(table, path)


def prepare_on_ray(cfg: DictConfig, out: Path) -> Prepared:
    """Writes the dataset into `out` with Ray tasks and Ray Data on the connected cluster."""
    if cfg.data.format is DataFormat.synthetic:
        data, files, meta = synthetic_log(cfg)
    else:
        data, meta = OmegaConf.to_object(cfg.data), None
        files = log_files(data.interactions)
    parts = _read_parts(files, data)
    str_users = not all(p.int_users for p in parts)
    str_items = not all(p.int_items for p in parts)
    float_times = not all(p.int_times for p in parts)
    distinct = [_distinct.remote(p.table, str_users, str_items) for p in parts]
    users = _merged([u for u, _ in distinct])
    items = _merged([i for _, i in distinct])
    if meta is None:
        meta = optional_item_table(data.items, data.item_id_column, data.text_columns, items)
    user_vocab, item_vocab = ray.put(users), ray.put(items)
    encoded = [
        _encode.remote(p.table, user_vocab, item_vocab, str_users, str_items, float_times)
        for p in parts
    ]
    raw = FilterStats(sum(p.rows for p in parts), len(users), len(items), 0)
    skipped = sum(p.skipped for p in parts)
    del parts, distinct  # the raw tables leave the object store once encoded
    coded = [table for table, _ in encoded]
    user_count, item_count, raw.rounds = _k_core(
        coded, [counts for _, counts in encoded], (len(users), len(items)), data
    )
    if not user_count.any():
        raise DataError(
            data.interactions,
            f"every user and item vanished under k-core filtering (min_user_interactions="
            f"{data.min_user_interactions}, min_item_interactions="
            f"{data.min_item_interactions}) of {raw.raw_interactions} interactions",
        )
    done = _write(cfg, out, coded, (users, items), (user_count, item_count), meta, raw, skipped)
    log_filtered(done.num_users, done.num_items, done.num_interactions, raw)
    return done


@contextmanager
def _ordered_sort_shuffles() -> Iterator[None]:
    """Ray Data, for this prepare, delivering blocks in order (the sorted rows are read in
    order) and shuffling by sort through the object store, which spills, rather than by
    hash into aggregator actors, which hold their partitions in their own memory."""
    context = DataContext.get_current()
    before = context.execution_options.preserve_order, context.shuffle_strategy
    context.execution_options.preserve_order = True
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.shuffle_strategy = before


def _write(
    cfg: DictConfig,
    out: Path,
    coded: list[ray.ObjectRef],
    vocabularies: tuple[pa.Array, pa.Array],
    counts: tuple[np.ndarray, np.ndarray],
    meta: pa.Table | None,
    stats: FilterStats,
    skipped: int,
) -> Prepared:
    """Every file of the dataset but the manifest, from the encoded parts and final counts
    (`stats` and `skipped`: what reading and filtering found)."""
    data = cfg.data
    (users, items), (user_count, item_count) = vocabularies, counts
    present = np.flatnonzero(user_count > 0)
    held = held_out(present.size, data.holdout_users, data.shuffle_seed)
    trained = int(present.size - held.sum())
    final = np.where(held, trained + np.cumsum(held) - 1, np.cumsum(~held) - 1)
    user_id = np.full(len(users), -1, np.int32)
    user_id[present] = final
    item_id = dense_ids(item_count > 0)
    raw_user = np.empty(present.size, np.int64)
    raw_user[final] = present
    text = write_item_and_user_tables(
        out, users.take(pa.array(raw_user)), items.filter(pa.array(item_count > 0)), meta
    )
    lengths = np.empty(present.size, np.int64)
    lengths[final] = user_count[present]
    shared = [
        ray.put(user_count >= data.min_user_interactions),
        ray.put(item_count >= data.min_item_interactions),
        ray.put(user_id),
        ray.put(item_id),
    ]
    refs = [_final_rows.remote(table, *shared) for table in coded]
    plan = _ShardPlan.of(lengths[:trained], data.users_per_shard, data.shuffle_seed)
    with _ordered_sort_shuffles():
        rows = ray.data.from_arrow_refs(refs).sort(["user", "time", "row"])
        large = int(lengths.sum()) >= 2**31
        writers = _SplitWriters(out, trained, data.max_history, large, plan)
        try:
            _stream_sorted(rows, writers, int(lengths.sum()))
        finally:
            writers.close()
        shards = _write_shards(out, writers.train_parts, plan)
    return Prepared(
        num_users=trained,
        num_items=int(item_id.max()) + 1,
        num_interactions=int(lengths[:trained].sum()),
        train_examples=int(np.maximum(lengths[:trained] - 3, 0).sum()),
        eval_counts={"valid": trained, "test": trained, "holdout": int(held.sum())},
        text_columns=text[0],
        items_with_text=text[1],
        stats=stats,
        skipped_rows=skipped,
        shards=shards,
    )
