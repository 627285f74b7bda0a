"""SASRec trained for real: it must learn the synthetic data's sequential structure."""

import json
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from genrec.artifacts import ITEM_EMBEDDINGS
from genrec.cf import sasrec
from genrec.cf.sasrec import (
    load_sasrec,
    pad_histories,
    sasrec_queries,
    train_sasrec,
)
from genrec.cf.training import fit, run_fingerprint
from genrec.config import load_config
from genrec.data_pipeline.prepare import prepare
from genrec.data_pipeline.prepared import EvalSet, load_prepared
from genrec.errors import ConfigError
from genrec.provenance import code_version
from tests.conftest import shared_dataset

SMALL_SYNTHETIC = ("data.synthetic.num_users=1500",)
FAST = ("sasrec.lr=5e-3", "sasrec.batch_size=128", "sasrec.eval_every=4")


def _config(run_dir: Path, *overrides: str):
    return load_config([], [f"run_dir={run_dir}", *SMALL_SYNTHETIC, *FAST, *overrides])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    """The prepared small synthetic dataset and a SASRec trained on it."""
    run_dir = tmp_path_factory.mktemp("sasrec")
    data_dir = prepare(_config(run_dir))
    out = train_sasrec(_config(run_dir, "sasrec.epochs=8"), data_dir, run_dir / "sasrec")
    return data_dir, out


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


class _ScriptedTrainer:
    """Validation ranks of the one target follow a script; the weight records the epoch."""

    def __init__(self, ranks: list[int]):
        self.model = nn.Linear(1, 1, bias=False)
        self.ranks, self.epoch = iter(ranks), 0

    def train_epoch(self) -> float:
        self.epoch += 1
        with torch.no_grad():
            self.model.weight.fill_(self.epoch)
        return 0.0

    def vectors(self, split: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Target item 0 scores 0, the next `rank` items 1, the others -1."""
        items = torch.full((10, 1), -1.0)
        items[0] = 0.0
        items[1 : 1 + next(self.ranks)] = 1.0
        return torch.ones(split.users.size, 1), items


def test_early_stopping_keeps_the_best_weights(tmp_path):
    none = np.zeros(0, np.int64)
    valid = EvalSet("valid", np.array([0]), np.array([0, 0]), none, np.array([0]))
    schedule = OmegaConf.create({"epochs": 20, "eval_every": 2, "patience": 2})
    trainer = _ScriptedTrainer([4, 1, 2, 1, 3])
    with closing(SummaryWriter(str(tmp_path))) as writer:
        result = fit(trainer, valid, schedule, writer)
    # validations at epochs 2, 4, 6, 8: the best is epoch 4 (rank 1), and 6 and 8 are no better
    assert (result.epochs, result.best_epoch) == (8, 4)
    assert result.valid["ndcg@10"] == pytest.approx(1 / np.log2(3))
    assert trainer.model.weight.item() == 4


def test_pad_histories_left_pads_the_last_items_shifted_by_one():
    offsets, items = np.array([0, 1, 4, 4 + 5]), np.array([7, 1, 2, 3, 0, 1, 2, 3, 4])
    assert pad_histories(offsets, items, 3).tolist() == [[0, 0, 8], [2, 3, 4], [3, 4, 5]]


@pytest.mark.parametrize(
    ("override", "message"),
    [("sasrec.patience=0", "sasrec.patience"), ("sasrec.heads=3", "divisible by sasrec.heads")],
)
def test_rejects_bad_settings(synthetic, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        train_sasrec(_config(tmp_path, override), synthetic[0], tmp_path / "sasrec")
    assert not (tmp_path / "sasrec").exists()


def test_beats_popularity_by_a_wide_margin(synthetic):
    metrics = _metrics(synthetic[1])
    sasrec_recall = metrics["test"]["recall@10"]
    popularity_recall = metrics["popularity"]["test"]["recall@10"]
    assert sasrec_recall >= 2 * popularity_recall
    assert sasrec_recall >= popularity_recall + 0.15
    assert metrics["valid"]["ndcg@10"] > metrics["popularity"]["valid"]["ndcg@10"]


@pytest.mark.parametrize("loss", ["sampled", "in_batch"])
def test_sampled_losses_learn_the_sequences_too(synthetic, tmp_path, loss):
    """For catalogues too large for the full softmax: within reach of it on the same data."""
    data_dir, full = synthetic
    cfg = _config(tmp_path, "sasrec.epochs=8", f"sasrec.loss={loss}", "sasrec.negatives=64")
    metrics = _metrics(train_sasrec(cfg, data_dir, tmp_path / "sasrec"))
    recall, full_recall = metrics["test"]["recall@10"], _metrics(full)["test"]["recall@10"]
    assert recall >= 0.8 * full_recall and recall >= 2 * metrics["popularity"]["test"]["recall@10"]


def test_sampled_softmax_is_the_softmax_over_the_target_and_the_draws():
    g = torch.Generator().manual_seed(0)
    hidden, items = torch.randn(4, 8, generator=g), torch.randn(30, 8, generator=g)
    targets, drawn = torch.tensor([3, 7, 7, 29]), torch.tensor([7, 11, 0])
    loss = sasrec.sampled_softmax(hidden, targets, items, drawn)
    rows = []
    for h, t in zip(hidden, targets, strict=True):
        others = [d for d in drawn.tolist() if d != t]  # a draw equal to the target is left out
        logits = h @ items[[int(t), *others]].T
        rows.append(-torch.log_softmax(logits, 0)[0])
    assert loss.item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-5)


def test_in_batch_softmax_subtracts_each_candidates_log_share():
    g = torch.Generator().manual_seed(0)
    hidden, items = torch.randn(5, 8, generator=g), torch.randn(10, 8, generator=g)
    targets = torch.tensor([2, 5, 2, 9, 5])
    log_share = torch.log(torch.tensor([0.1] * 10)) + torch.arange(10) * 0.3
    loss = sasrec.in_batch_softmax(hidden, targets, items, log_share)
    candidates = torch.tensor([2, 5, 9])
    logits = hidden @ items[candidates].T - log_share[candidates]
    column = torch.tensor([0, 1, 0, 2, 1])
    assert loss.item() == pytest.approx(F.cross_entropy(logits, column).item(), rel=1e-5)
    flat = sasrec.in_batch_softmax(hidden, targets, items, torch.zeros(10))
    assert loss.item() != pytest.approx(flat.item(), rel=1e-3)


def test_negatives_count_in_the_fingerprint_only_for_the_sampled_loss(synthetic, tmp_path):
    data = load_prepared(synthetic[0])

    def key(*overrides):
        return run_fingerprint(data.manifest, _config(tmp_path, *overrides).sasrec, 0, 1)

    assert key("sasrec.negatives=10") == key("sasrec.negatives=20")
    sampled = ("sasrec.loss=sampled",)
    assert key(*sampled, "sasrec.negatives=10") != key(*sampled, "sasrec.negatives=20")


def test_outputs(synthetic):
    data_dir, out = synthetic
    num_items = json.loads((data_dir / "manifest.json").read_text())["num_items"]
    embeddings = np.load(out / ITEM_EMBEDDINGS)
    assert embeddings.shape == (num_items, 64) and embeddings.dtype == np.float32
    metrics = _metrics(out)
    assert set(metrics["test"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (1, 5, 10, 20)}
    assert set(metrics["popularity"]) == {"valid", "test"}
    assert 1 <= metrics["best_epoch"] <= metrics["epochs"] <= 8
    assert metrics["config"]["sasrec"]["epochs"] == 8
    assert metrics["code"]["genrec"] == code_version()["genrec"]
    assert list((out / "tb").glob("events.out.tfevents.*"))

    model = load_sasrec(out)
    np.testing.assert_array_equal(model.item_vectors.detach().numpy(), embeddings)
    histories = torch.tensor([[0, 0, 3, 1], [5, 6, 7, 8]])
    with torch.no_grad():
        assert sasrec_queries(model, histories).shape == (2, embeddings.shape[1])


def test_reuses_a_run_with_the_same_fingerprint(synthetic, monkeypatch):
    data_dir, out = synthetic
    before = (out / "metrics.json").stat().st_mtime_ns

    def no_training(*args):
        raise AssertionError("retrained although nothing changed")

    monkeypatch.setattr(sasrec, "SASRecTrainer", no_training)
    cfg = _config(data_dir.parent, "sasrec.epochs=8")
    assert train_sasrec(cfg, data_dir, out) == out
    assert (out / "metrics.json").stat().st_mtime_ns == before
    with pytest.raises(AssertionError, match="retrained"):
        train_sasrec(_config(data_dir.parent, "sasrec.epochs=7"), data_dir, out)


def test_same_seed_same_model(synthetic, tmp_path):
    data_dir = synthetic[0]
    runs = [
        train_sasrec(
            _config(tmp_path, "sasrec.epochs=1", f"seed={seed}"), data_dir, tmp_path / name
        )
        for seed, name in ((3, "a"), (3, "b"), (4, "c"))
    ]
    a, b, c = (np.load(run / ITEM_EMBEDDINGS) for run in runs)
    np.testing.assert_array_equal(a, b)
    assert _metrics(runs[0])["test"] == _metrics(runs[1])["test"]
    assert not np.array_equal(a, c)


@pytest.mark.shared
def test_beats_popularity_on_industrial_scientific(tmp_path):
    inter = shared_dataset("amazon18_industrial_scientific", "Scientific.inter.json")
    cfg = load_config(
        [],
        [
            f"run_dir={tmp_path}",
            "data.format=lcrec",
            f"data.interactions={inter}",
            *FAST,
            "sasrec.lr=1e-2",
            "sasrec.epochs=3",
            "sasrec.eval_every=3",
        ],
    )
    metrics = _metrics(train_sasrec(cfg, prepare(cfg), tmp_path / "sasrec"))
    # measured: 0.080 against 0.023 after 3 epochs
    sasrec_recall = metrics["test"]["recall@10"]
    popularity_recall = metrics["popularity"]["test"]["recall@10"]
    assert sasrec_recall >= 2 * popularity_recall
    assert sasrec_recall >= popularity_recall + 0.03
