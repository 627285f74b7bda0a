"""`genrec prepare`: k-core, id maps, leave-one-out, shards, manifest, reuse and atomic output."""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data_pipeline.prepare import load_manifest, prepare
from genrec.data_pipeline.preprocess import k_core
from genrec.data_pipeline.shards import read_shard
from genrec.errors import DataError


def write_sequences(path, rows):
    path.write_text("".join(" ".join(map(str, row)) + "\n" for row in rows))
    return path


def test_k_core_cascades():
    # round 1 drops user 4 and item 30; that leaves user 3 and item 40 with one each (round 2)
    users = np.array([1, 1, 2, 2, 3, 3, 4])
    items = np.array([10, 20, 10, 20, 30, 40, 40])
    keep, rounds = k_core(users, items, 2, 2)
    assert keep.tolist() == [0, 1, 2, 3]
    assert rounds == 3


def test_k_core_equals_the_definition():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 300, 2000), (rng.zipf(1.5, 2000) % 400)
    expected = np.arange(users.size)
    while True:  # the definition: drop under-count rows until none is under count
        u, i = users[expected], items[expected]
        ok = (np.bincount(u)[u] >= 5) & (np.bincount(i)[i] >= 8)
        if ok.all():
            break
        expected = expected[ok]
    keep, _ = k_core(users, items, 5, 8)
    assert keep.tolist() == expected.tolist()
    assert 0 < keep.size < users.size


def test_leave_one_out_and_truncation(tmp_path, make_config):
    rows = [[100, 7, 8, 9, 7, 8, 9], [200, 9, 8, 7, 9], [300, 8, 9, 7, 8, 9, 7, 8]]
    seqs = write_sequences(tmp_path / "s.txt", rows)
    cfg = make_config(
        "data.format=sequences",
        f"data.interactions={seqs}",
        "data.min_user_interactions=3",
        "data.min_item_interactions=1",
        "data.max_history=3",
    )
    data = prepare(cfg)
    manifest = load_manifest(data)
    assert manifest["num_users"] == 3 and manifest["num_items"] == 3
    assert manifest["num_interactions"] == 6 + 4 + 7
    items = pq.read_table(data / "items.parquet").to_pydict()
    assert items["raw_id"] == [7, 8, 9]  # contiguous ids follow raw-id order
    test = pq.read_table(data / "test.parquet").to_pydict()
    valid = pq.read_table(data / "valid.parquet").to_pydict()
    # user 100: 7 8 9 7 8 9 -> ids 0 1 2 0 1 2
    assert test["target"][0] == 2 and test["history"][0] == [2, 0, 1]
    assert valid["target"][0] == 1 and valid["history"][0] == [1, 2, 0]
    # user 200: 9 8 7 9 -> train [2, 1], valid target 0, test target 2
    assert valid["history"][1] == [2, 1] and valid["target"][1] == 0 and test["target"][1] == 2
    shards = dict(s for shard in manifest["shards"] for s in read_shard(data / shard["path"]))
    assert shards[1].tolist() == [2, 1]  # the full training sequence, untruncated
    assert shards[2].tolist() == [1, 2, 0, 1, 2]
    assert manifest["num_train_examples"] == (4 - 1) + (2 - 1) + (5 - 1)
    assert manifest["num_valid_examples"] == manifest["num_test_examples"] == 3
    users = pq.read_table(data / "users.parquet").to_pydict()
    assert users["raw_id"] == [100, 200, 300]


def test_synthetic_manifest_is_consistent(make_config):
    cfg = make_config(
        "data.synthetic.num_users=400", "data.synthetic.num_items=120", "data.users_per_shard=64"
    )
    data = prepare(cfg)
    m = load_manifest(data)
    assert m["num_users"] > 350 and m["num_items"] > 100
    assert len(m["shards"]) == -(-m["num_users"] // 64)
    assert sum(s["users"] for s in m["shards"]) == m["num_users"]
    assert sum(s["examples"] for s in m["shards"]) == m["num_train_examples"]
    seqs = pq.read_table(data / "sequences.parquet")
    assert sum(len(x) for x in seqs["items"].to_pylist()) == m["num_interactions"]
    assert m["config"]["data"]["format"] == "synthetic"
    assert {"genrec", "git_commit"} <= set(m["code"])
    assert m["text_columns"] == ["title", "categories"] and m["items_with_text"] == m["num_items"]
    for shard in m["shards"]:
        assert hashlib.sha256((data / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]


@pytest.fixture
def two_users(tmp_path):
    """A two-user sequences file and the overrides that keep both users."""
    seqs = write_sequences(tmp_path / "s.txt", [[1, 1, 2, 3, 1], [2, 2, 3, 1, 2]])
    over = [
        "data.format=sequences",
        f"data.interactions={seqs}",
        "data.min_item_interactions=1",
        "data.min_user_interactions=3",
    ]
    return seqs, over


def test_rerun_reuses_and_changed_input_rebuilds(two_users, make_config):
    seqs, over = two_users
    data = prepare(make_config(*over))
    stamp = (data / "manifest.json").stat().st_mtime_ns
    assert prepare(make_config(*over)) == data
    assert (data / "manifest.json").stat().st_mtime_ns == stamp
    write_sequences(seqs, [[1, 1, 2, 3, 1], [2, 2, 3, 1, 2], [3, 3, 2, 1]])
    assert load_manifest(prepare(make_config(*over)))["num_users"] == 3
    assert load_manifest(prepare(make_config(*over, "data.max_history=2")))["max_history"] == 2


def test_failed_run_keeps_previous_output(two_users, make_config):
    seqs, over = two_users
    data = prepare(make_config(*over))
    before = json.loads((data / "manifest.json").read_text())
    seqs.write_text("1 1 2 3\nbroken\n")
    with pytest.raises(DataError):
        prepare(make_config(*over))
    assert json.loads((data / "manifest.json").read_text()) == before
    assert sorted(p.name for p in data.parent.iterdir()) == ["data"]


def test_everything_vanishing_under_k_core_is_an_error(tmp_path, make_config):
    seqs = write_sequences(tmp_path / "tiny.txt", [[1, 1, 2, 3], [2, 4, 5, 6]])
    with pytest.raises(DataError, match=r"tiny\.txt: every user and item vanished under k-core"):
        prepare(make_config("data.format=sequences", f"data.interactions={seqs}"))
    assert not (tmp_path / "run" / "data").exists()


def test_skipped_rows_and_missing_text_reach_the_manifest(tmp_path, make_config):
    log = tmp_path / "log.csv"
    rows = [f"{u},{i},{t}" for u in range(3) for t, i in enumerate([1, 2, 3, 1])]
    log.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n9,9\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n1,One\n2,Two\n")
    data = prepare(
        make_config(
            "data.format=log",
            f"data.interactions={log}",
            f"data.items={items}",
            "data.on_bad_rows=skip",
            "data.min_item_interactions=1",
            "data.min_user_interactions=3",
        )
    )
    m = load_manifest(data)
    assert m["raw"]["skipped_rows"] == 1
    assert m["items_with_text"] == 2 and m["num_items"] == 3
    assert pq.read_table(data / "items.parquet")["title"].to_pylist() == ["One", "Two", ""]
    assert pa.types.is_integer(pq.read_table(data / "items.parquet")["raw_id"].type)


def test_held_out_users_leave_training_and_keep_their_whole_sequence(tmp_path):
    from genrec.config import load_config
    from genrec.data_pipeline.prepared import load_prepared

    def prepared(*overrides):
        cfg = load_config([], [f"run_dir={tmp_path / str(len(overrides))}", *overrides])
        return load_prepared(prepare(cfg))

    everyone = prepared("data.synthetic.num_users=300")
    some = prepared("data.synthetic.num_users=300", "data.holdout_users=0.2")
    held = some.holdout
    assert everyone.holdout is None and some.num_users + held.users.size == everyone.num_users
    assert held.users.size == round(0.2 * everyone.num_users)
    assert sorted(held.users) == list(range(some.num_users, everyone.num_users))
    assert some.valid.users.max() < some.num_users
    raw = pq.read_table(tmp_path / "2" / "data" / "users.parquet").column("raw_id").to_pylist()
    before = pq.read_table(tmp_path / "1" / "data" / "users.parquet").column("raw_id")
    full = {raw_id: row for row, raw_id in enumerate(before.to_pylist())}
    for row in range(held.users.size):
        # The held-out user's last item is the target, everything before it the history.
        mine = full[raw[held.users[row]]]
        test = np.flatnonzero(everyone.test.users == mine)[0]
        assert held.targets[row] == everyone.test.targets[test]
        history = held.history[held.offsets[row] : held.offsets[row + 1]]
        test_set = everyone.test
        theirs = test_set.history[test_set.offsets[test] : test_set.offsets[test + 1]]
        assert history.tolist() == theirs.tolist()
    assert some.manifest["num_train_examples"] < everyone.manifest["num_train_examples"]
