"""Streaming the shards: every example read exactly once across ranks and loader workers."""

import tarfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from genrec.data_pipeline.prepare import load_manifest, prepare
from genrec.data_pipeline.ray_ingest import (
    DataPosition,
    EveryRowSplit,
    PositionTracker,
    start_board,
    stream_batches,
    training_stream,
    unit_sizes,
    work_units,
)
from genrec.data_pipeline.shards import (
    _own_layout,
    _tar_members,
    key_digits,
    read_shard,
    shard_arrays,
    shard_bytes,
)
from genrec.data_pipeline.streaming import (
    TrainExamples,
    collate,
    ray_eval_examples,
    shard_paths,
)
from genrec.errors import DataError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from genrec.config import load_config

    run = tmp_path_factory.mktemp("stream")
    cfg = load_config(
        [],
        [
            f"run_dir={run}",
            "data.synthetic.num_users=300",
            "data.synthetic.num_items=90",
            "data.users_per_shard=50",
            "data.max_history=4",
        ],
    )
    return prepare(cfg)


def key(example):
    return example["user"], len(example["history"]), example["target"]


def all_examples(data_dir, **kwargs):
    return [key(ex) for ex in TrainExamples(data_dir, max_history=4, shuffle_buffer=0, **kwargs)]


def test_examples_are_every_prefix(data_dir):
    examples = list(TrainExamples(data_dir, max_history=4, shuffle_buffer=0))
    assert len(examples) == load_manifest(data_dir)["num_train_examples"]
    assert max(len(ex["history"]) for ex in examples) == 4
    assert min(len(ex["history"]) for ex in examples) == 1


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_partition_the_examples(data_dir, world_size):
    whole = Counter(all_examples(data_dir))
    parts = [
        Counter(all_examples(data_dir, rank=r, world_size=world_size)) for r in range(world_size)
    ]
    assert sum(parts, Counter()) == whole
    assert all(parts)


def test_more_readers_than_shards_still_partition(data_dir):
    readers = len(shard_paths(data_dir)) + 3
    parts = [Counter(all_examples(data_dir, rank=r, world_size=readers)) for r in range(readers)]
    assert sum(parts, Counter()) == Counter(all_examples(data_dir))


def test_dataloader_workers_split_shards(data_dir):
    dataset = TrainExamples(data_dir, max_history=4, rank=1, world_size=2, shuffle_buffer=16)
    loader = DataLoader(dataset, batch_size=32, num_workers=2, collate_fn=collate)
    seen = Counter()
    for batch in loader:
        assert batch["history"].shape[1] <= 4
        lengths = (batch["history"] >= 0).sum(1)
        for u, n, t in zip(
            batch["user"].tolist(), lengths.tolist(), batch["target"].tolist(), strict=True
        ):
            seen[(u, n, t)] += 1
    assert seen == Counter(all_examples(data_dir, rank=1, world_size=2))


def test_epochs_reshuffle_deterministically(data_dir):
    ds = TrainExamples(data_dir, max_history=4, seed=3, shuffle_buffer=64)
    first = [key(ex) for ex in ds]
    assert first == [key(ex) for ex in ds]
    ds.set_epoch(1)
    second = [key(ex) for ex in ds]
    assert second != first and Counter(second) == Counter(first)


def test_collate_left_pads():
    batch = collate(
        [
            {"user": 1, "history": np.array([5, 6, 7]), "target": 8},
            {"user": 2, "history": np.array([9]), "target": 3},
        ]
    )
    assert batch["history"].tolist() == [[5, 6, 7], [-1, -1, 9]]
    assert batch["target"].dtype == torch.long


def test_shards_read_by_the_webdataset_library(data_dir):
    path = shard_paths(data_dir)[0]
    samples = list(wds.WebDataset(str(path), shardshuffle=False).decode())
    assert len(samples) == load_manifest(data_dir)["shards"][0]["users"]
    assert samples[0]["items.npy"].dtype == np.int32


def test_own_shards_are_read_with_arrays_and_any_other_tar_with_tarfile(data_dir, tmp_path):
    """genrec's own layout is read without tarfile, to the samples tarfile reads; a tar that
    another writer made (webdataset's, with int64 arrays) is read by tarfile."""
    path = shard_paths(data_dir)[0]
    fast, slow = _own_layout(path.read_bytes()), _tar_members(path)
    assert fast is not None and len(fast[0]) == load_manifest(data_dir)["shards"][0]["users"]
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))
    other = tmp_path / "other.tar"
    with wds.TarWriter(str(other)) as sink:
        for user, items in read_shard(path):
            sink.write({"__key__": f"{user:09d}", "items.npy": items.astype(np.int64)})
    assert _own_layout(other.read_bytes()) is None
    assert all(np.array_equal(a, b) for a, b in zip(shard_arrays(other), slow, strict=True))


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (lambda b: b[:700] + b"\xff" * 600 + b[1300:], "corrupt shard: unreadable tar header"),
        (lambda b: b[:5000], "corrupt or truncated shard"),
        (lambda b: b[:100] + b"x" + b[101:], "corrupt or truncated shard"),
    ],
)
def test_damaged_shard_is_named(data_dir, tmp_path, damage, error):
    broken = tmp_path / "train-broken.tar"
    broken.write_bytes(damage(shard_paths(data_dir)[0].read_bytes()))
    with pytest.raises(DataError, match=rf"train-broken\.tar: {error}"):
        list(read_shard(broken))


def test_checksum_mismatch_stops_before_any_sample(data_dir, tmp_path):
    path = shard_paths(data_dir)[0]
    with pytest.raises(DataError, match="checksum mismatch"):
        next(read_shard(path, sha256="0" * 64))
    assert len(list(read_shard(path, load_manifest(data_dir)["shards"][0]["sha256"]))) > 0


def test_unknown_item_ids_are_named_with_their_shard(tmp_path):
    offsets, items = np.array([0, 2, 5]), np.array([1, 2, 0, 7, 3])
    path = tmp_path / "train-000000.tar"
    path.write_bytes(shard_bytes(np.array([0, 1]), offsets, items))
    assert [s.tolist() for _, s in read_shard(path, num_items=8)] == [[1, 2], [0, 7, 3]]
    with pytest.raises(
        DataError, match=r"train-000000.tar: member 000000001.items.npy: item id 7 "
    ):
        list(read_shard(path, num_items=5))


def test_member_names_widen_with_the_user_ids(tmp_path):
    """Names get as many digits as the largest user id needs (9 at least), never wrapping;
    a width too narrow for an id is refused."""
    assert key_digits(10**9) == 9 and key_digits(10**9 + 1) == 10
    offsets, items = np.array([0, 2, 4]), np.array([5, 6, 7, 8])
    path = tmp_path / "wide.tar"
    path.write_bytes(shard_bytes(np.array([0, 1]), offsets, items, digits=12))
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["000000000000.items.npy", "000000000001.items.npy"]
    assert [(u, s.tolist()) for u, s in read_shard(path)] == [(0, [5, 6]), (1, [7, 8])]
    offsets = np.repeat([0, 2], [101, 1])
    with pytest.raises(ValueError, match="user id 100 does not fit a 2-digit member name"):
        shard_bytes(np.array([100]), offsets, items, digits=2)


def test_tracker_knows_what_is_in_flight():
    """A row counts as trained once all its examples are; until then it is in flight with the
    examples already trained, which a resumed run trains a second time."""
    tracker = PositionTracker(record=True)
    tracker.received(np.array([0, 0, 1]), np.array([3, 5, 2]), np.array([4, 0, 2]))
    tracker.trained(np.array([[0, 3], [1, 2], [1, 2], [0, 3]]))
    state = tracker.state()
    assert state == {"rows": {0: [5], 1: [2]}, "in_flight": [[0, 3, 2]]}
    position = DataPosition()
    position.advance([state], sizes=[4, 3])
    assert (position.done, position.rows, position.in_flight) == ([], {0: [5], 1: [2]}, {0: {3: 2}})
    again = DataPosition.from_state(position.state_dict())
    assert again == position
    assert tracker.flush() == [[0, 3], [0, 5], [1, 2]] and tracker.flush() == []
    assert tracker.state()["rows"] == {}


def key_of(row):
    return row["unit"], row["row"]


def test_the_train_split_keeps_every_row(ray_cluster):
    """Ray Train's own split (equal=True) would drop the 7th row to give 2 workers 3 each."""
    splits = EveryRowSplit().configure({"train": ray.data.range(7)}, 2, None, None)
    with ThreadPoolExecutor(2) as pool:
        rows = pool.map(lambda split: [r["id"] for r in split["train"].iter_rows()], splits)
    assert sorted(row for split in rows for row in split) == list(range(7))


def test_ray_stream_splits_resumes_and_skips_finished_shards(data_dir, ray_cluster):
    """Two consumers of a streaming_split see every (epoch, user) once, each unit reading the
    shard its epoch's order names; a stream resumed from a position opens no finished unit and
    repeats no row trained on."""
    board = start_board()
    sizes = unit_sizes(data_dir, epochs=2, seed=0)
    ray.get(board.start.remote(DataPosition().state_dict(), 0))
    halves = training_stream(data_dir, 2, 0, board).streaming_split(2, equal=False)

    def consume(it):  # split iterators advance together, so each needs its own consumer
        return [
            (int(u), int(r), int(user))
            for b in it.iter_batches()
            for u, r, user in zip(b["unit"], b["row"], b["user"], strict=True)
        ]

    with ThreadPoolExecutor(2) as pool:
        received = list(pool.map(consume, halves))
    paths = shard_paths(data_dir)
    users = [[u for u, _ in read_shard(paths[s])] for _, s in work_units(len(paths), 2, 0)]
    assert all(users[u][r] == user for half in received for u, r, user in half)
    rows = [[(u, r) for u, r, _ in half] for half in received]
    every = [(unit, row) for unit, size in enumerate(sizes) for row in range(size)]
    assert sorted(rows[0] + rows[1]) == every
    assert len(every) == 2 * load_manifest(data_dir)["num_users"] and rows[0] and rows[1]

    tracker = PositionTracker()
    stream = sorted(training_stream(data_dir, 2, 0, board).take_all(), key=key_of)
    trained = [r for r in stream if r["unit"] == 0] + [r for r in stream if r["unit"] == 1][:20]
    block = pa.Table.from_pylist([r | {"items": list(r["items"])} for r in trained])
    for batch in stream_batches([block], tracker, 4, 16, 0, np.random.default_rng(0)):
        tracker.trained(batch["source"])
    position = DataPosition()
    position.advance([tracker.state()], sizes)
    assert position.done == [0] and sum(map(len, position.rows.values())) == 20
    assert position.in_flight == {}
    ray.get(board.start.remote(position.state_dict(), 1))
    rest = training_stream(data_dir, 2, 0, board).take_all()
    again = {(r["unit"], r["row"]) for r in rest}
    assert len(again) == sum(sizes) - len(trained)
    assert not again & {(u, r) for u, rows in position.rows.items() for r in rows}
    valid = ray_eval_examples(data_dir, "valid")
    assert valid.count() == load_manifest(data_dir)["num_valid_examples"]
    attempts = ray.get(board.history.remote())
    assert 0 not in attempts[-1]["read"] and sorted(attempts[-1]["read"]) == list(
        range(1, len(sizes))
    )
