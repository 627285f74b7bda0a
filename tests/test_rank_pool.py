"""Ranking users at scale: `genrec evaluate` and `genrec recommend` on the Ray actor pool give
what one process gives, every batch once even when an actor is SIGKILLed; a sampled test
split reports an interval that covers the full value; `genrec.load(run_dir)` recommends what
evaluation ranked; bad input fails before Ray is asked for anything."""

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from ray.util.state import list_actors

import genrec
from genrec import stages
from genrec.cli import main
from genrec.cluster.rank_pool import RankPool, every_batch_once
from genrec.config import load_config
from genrec.data_pipeline.prepared import latest_histories, load_eval_set
from genrec.errors import GenrecError
from genrec.methods import method_spec
from genrec.trainer.evaluate import evaluate_checkpoint
from tests.conftest import TINY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]
SMALL_BATCHES = ["evaluate.batch_size=16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny run: its config, model, tables and data folder."""
    folder = tmp_path_factory.mktemp("ranked")
    cfg = load_config([], [f"run_dir={folder}", *TINY, *SMALL_BATCHES])
    checkpoint, tables = stages.trained_model(cfg)
    return cfg, checkpoint, tables, stages.data(cfg)


def _evaluate(run, out, *overrides, pool_actors=0):
    cfg, checkpoint, tables, data_dir = run
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    pool = None
    if pool_actors:
        cfg.cluster.rank_actors = pool_actors
        num_items = json.loads((data_dir / "manifest.json").read_text())["num_items"]
        pool = RankPool(cfg, checkpoint, tables, num_items)
    method = method_spec(cfg.method)
    return evaluate_checkpoint(cfg, method, checkpoint, data_dir, tables, {}, out, pool)


# Ray Data warns when the pool gets fewer blocks than actors: they would not all work.
@pytest.mark.filterwarnings("error:The minimum number of concurrent actors")
def test_the_pool_ranks_as_one_process(run, tmp_path):
    one = _evaluate(run, tmp_path / "one.json")
    for actors in (1, 2):
        sharded = _evaluate(run, tmp_path / f"{actors}.json", pool_actors=actors)
        assert sharded["valid"] == one["valid"] and sharded["test"] == one["test"], actors


def test_a_lost_actor_loses_no_batch(run, tmp_path):
    """Each actor is SIGKILLed at batch 3 (once); Ray Data restarts it and retries the
    batch, and the metrics are those of one process."""
    one = _evaluate(run, tmp_path / "one.json")
    drilled = _evaluate(run, tmp_path / "drill.json", "cluster.fail_at_step=3", pool_actors=2)
    assert drilled["valid"] == one["valid"] and drilled["test"] == one["test"]
    actors = [a for a in list_actors(detail=True, limit=10_000) if "RankActor" in a.class_name]
    assert sum(actor.num_restarts for actor in actors) >= 1


def test_a_batch_lost_or_repeated_is_an_error():
    every_batch_once([0, 1, 2], 3)
    with pytest.raises(GenrecError, match=r"returned 2 batches for 3 \(missing \[1\]"):
        every_batch_once([0, 2], 3)
    with pytest.raises(GenrecError, match="repeated 1"):
        every_batch_once([0, 1, 1, 2], 3)


def test_a_sampled_test_split_reports_its_interval(run, tmp_path):
    """Each metric of a sample of 120 of the 300 test users, with its 95% interval (whose
    coverage is tested in test_metrics.py), near the full split's."""
    full = _evaluate(run, tmp_path / "full.json")
    sampled = _evaluate(run, tmp_path / "sampled.json", "evaluate.test_users=120")
    assert sampled["test_users"] == 120 and "test_interval" not in full
    assert sampled["valid"] == full["valid"]
    for key in ("recall@10", "ndcg@10", "recall@5"):
        half = sampled["test_interval"][key]
        assert 0.02 < half < 0.2
        assert abs(sampled["test"][key] - full["test"][key]) <= 1.5 * half, key


def test_load_recommends_what_evaluation_ranked(run):
    cfg, _, _, data_dir = run
    recommender = genrec.load(cfg.run_dir)
    split = load_eval_set(data_dir, "test")
    rows = np.arange(20)
    items, scores = recommender.ranking.top_k(split, rows, 10)
    histories = [
        recommender.item_ids[split.history[a:b]].tolist()
        for a, b in zip(split.offsets[rows], split.offsets[rows + 1], strict=True)
    ]
    given = recommender.recommend(histories, k=10, users=split.users[rows].tolist())
    for row, lists in enumerate(given):
        assert [item for item, _ in lists] == recommender.item_ids[items[row]].tolist()
        assert [score for _, score in lists] == pytest.approx(scores[row].tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="history 1 is empty"):
        recommender.recommend([histories[0], []])
    with pytest.raises(ValueError, match="is not in the catalogue"):
        recommender.recommend([["no-such-item"]])


def test_a_recommendation_reads_each_users_newest_items(run):
    data_dir = run[3]
    test = load_eval_set(data_dir, "test")
    latest = latest_histories(data_dir, max_history=3)
    assert latest.users.tolist() == sorted(test.users.tolist())
    row = int(np.flatnonzero(test.users == latest.users[5])[0])
    whole = [*test.history[test.offsets[row] : test.offsets[row + 1]], test.targets[row]]
    assert latest.history[latest.offsets[5] : latest.offsets[6]].tolist() == whole[-3:]


def _recommend(run, *overrides):
    cfg = run[0]
    main(["recommend", f"run_dir={cfg.run_dir}", *TINY, *SMALL_BATCHES, *overrides])


def test_recommend_writes_every_users_top_k_alike_on_the_pool(run, tmp_path):
    cfg = run[0]
    _recommend(run, f"recommend.out={tmp_path / 'one.parquet'}")
    _recommend(run, f"recommend.out={tmp_path / 'two.parquet'}", "cluster.rank_actors=2")
    one, two = (pq.read_table(tmp_path / f"{n}.parquet") for n in ("one", "two"))
    manifest = json.loads((Path(cfg.run_dir) / "data" / "manifest.json").read_text())
    users = manifest["num_users"] + manifest.get("num_holdout_users", 0)
    assert one.num_rows == users * 10 and one.column_names == ["user", "rank", "item", "score"]
    assert one.equals(two)
    first = one.slice(0, 10).to_pydict()
    assert first["rank"] == list(range(1, 11)) and len(set(first["user"])) == 1


def test_recommend_for_the_users_of_a_file(run, tmp_path):
    raw = pq.read_table(run[3] / "users.parquet")["raw_id"].to_pylist()
    wanted = [raw[7], raw[2], raw[5]]
    (tmp_path / "users.txt").write_text("\n".join(map(str, wanted)))
    out = tmp_path / "some.parquet"
    users = f"recommend.users={tmp_path / 'users.txt'}"
    _recommend(run, users, f"recommend.out={out}", "recommend.k=3")
    table = pq.read_table(out).to_pydict()
    assert [str(u) for u in table["user"][::3]] == [str(u) for u in wanted]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["recommend.users={users}"], r"users\.txt:2: user 'nobody' is not in the prepared data"),
        (["recommend.k=100000"], r"'recommend\.k' \(100000\) must be between 1 and"),
        (["run_dir={empty}"], r"train/model\.pt: no trained model in this run folder"),
    ],
)
def test_bad_input_is_named_before_ray_is_asked(run, tmp_path, capsys, overrides, message):
    raw = pq.read_table(run[3] / "users.parquet")["raw_id"].to_pylist()
    (tmp_path / "users.txt").write_text(f"{raw[0]}\nnobody\n")
    values = {"users": tmp_path / "users.txt", "empty": tmp_path / "empty"}
    args = [o.format(**values) for o in overrides]
    with pytest.raises(SystemExit) as exit_code:
        _recommend(run, "cluster.rank_actors=2", *args)
    assert exit_code.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert re.search(message, line), line
