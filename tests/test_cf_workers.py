"""SASRec and LightGCN on Ray Train workers (`cluster.cf_workers`): the ranks train their parts
of every batch with averaged gradients, so they step as one process would, and the stage's
folder is what an in-process training writes."""

import json

import numpy as np
import pytest

from genrec import stages
from genrec.artifacts import CF_METRICS, ITEM_EMBEDDINGS, LIGHTGCN, SASREC, stage_dir
from genrec.cf.training import Shard
from tests.conftest import TINY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def test_the_shards_of_a_batch_hold_each_row_once():
    rows = np.arange(11) * 3
    parts = [Shard(rank, 3).take(rows) for rank in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == rows.tolist()
    assert [part.size for part in parts] == [4, 4, 3]


def _trained(make_config, tmp_path, model: str, *overrides: str) -> tuple[dict, np.ndarray]:
    cfg = make_config(*TINY, f"run_dir={tmp_path}", *overrides)
    folder = getattr(stages, model)(cfg)
    assert folder == stage_dir(cfg.run_dir, {"sasrec": SASREC, "lightgcn": LIGHTGCN}[model])
    assert sorted(p.name for p in folder.parent.iterdir()) == [model]  # no Ray storage left
    metrics = json.loads((folder / CF_METRICS).read_text())
    return metrics, np.load(folder / ITEM_EMBEDDINGS)


def test_lightgcn_on_two_workers_trains_as_one_process(make_config, tmp_path):
    """LightGCN's BPR mean over a batch's edges is the mean of its two equal halves' means: two
    workers averaging their halves' gradients take the steps one process takes, up to the
    order of float sums (which Adam turns into a rare larger step where a gradient is ~0)."""
    settings = ("lightgcn.epochs=4", "lightgcn.eval_every=2", "lightgcn.batch_size=512")
    alone, alone_items = _trained(make_config, tmp_path / "one", "lightgcn", *settings)
    two, two_items = _trained(
        make_config, tmp_path / "two", "lightgcn", *settings, "cluster.cf_workers=2"
    )
    assert (alone["workers"], two["workers"]) == (1, 2)
    apart = np.abs(two_items - alone_items)
    assert (apart < 1e-4).mean() > 0.95 and apart.max() < 2e-3
    assert two["valid"]["ndcg@10"] == pytest.approx(alone["valid"]["ndcg@10"], abs=1e-3)


def test_sasrec_on_two_workers_learns_what_one_process_learns(make_config, tmp_path):
    """SASRec's two halves of a batch differ a little in positions (its loss is a mean over
    them) and in dropout draws, so two workers end near one process, not on it."""
    settings = ("sasrec.epochs=4", "sasrec.eval_every=2")
    alone, _ = _trained(make_config, tmp_path / "one", "sasrec", *settings)
    two, _ = _trained(make_config, tmp_path / "two", "sasrec", *settings, "cluster.cf_workers=2")
    assert two["workers"] == 2
    assert two["valid"]["ndcg@10"] == pytest.approx(alone["valid"]["ndcg@10"], rel=0.2)
