"""benchmarks/diagnose.py: the oracle's rank is the exact ranking restricted to the target's
first code, the first code's rank is its place among the decoder's level-0 logits, collisions
are counted on the codes without the dedup code, and SASRec's figures are read off its own
scores the same way."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from genrec.artifacts import MODEL
from genrec.cf.sasrec import SASRec
from genrec.data_pipeline.prepared import EvalSet
from genrec.trainer.beam_search import beam_search
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.trie import ItemTrie

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("diagnose", REPO / "benchmarks" / "diagnose.py")
diagnose = importlib.util.module_from_spec(spec)
spec.loader.exec_module(diagnose)
K, D = 8, 3


def test_oracle_rank_is_the_exact_ranking_within_the_first_code():
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", codebook_size=K, dedup_size=D, max_history_items=6)
    model = GenerativeRecommender(config).eval()
    rng = np.random.default_rng(0)
    codes = np.unique(
        np.c_[rng.integers(0, K, (200, 3)) // [2, 1, 1], rng.integers(0, D, (200, 1))], axis=0
    )
    table = torch.as_tensor(codes[rng.permutation(len(codes))])
    users = 6
    target = torch.as_tensor(rng.choice(len(table), users, replace=False))
    history = table[torch.as_tensor(rng.integers(0, len(table), (users, 4)))]
    batch = SimpleNamespace(
        history_codes=history,
        target_codes=table[target],
        target=target,
        user=torch.zeros(users, dtype=torch.long),
    )
    with torch.no_grad():
        ranks = diagnose.oracle_ranks(model, batch, table)
        _, first_ranks = diagnose.teacher_forced(model, batch)
        level0 = model(history, table[target], batch.user)[:, 0]
    for row in range(users):
        order = level0[row].argsort(descending=True)
        assert first_ranks[row] == torch.nonzero(order == table[target[row], 0]).item()
    assert (first_ranks > 0).any()
    with torch.no_grad():
        ranked, _ = beam_search(model, ItemTrie.from_codes(table.numpy()), history, len(table))
    for row in range(users):
        same_first = table[ranked[row], 0] == table[target[row], 0]
        expected = int(torch.nonzero(ranked[row][same_first] == target[row]).item())
        assert ranks[row] == expected
    assert (ranks > 0).any()  # not a ranking that puts every target first


def test_collisions_leave_the_dedup_code_aside():
    table = torch.tensor([[0, 1, 2, 0], [0, 1, 2, 1], [0, 2, 2, 0], [1, 0, 0, 0]])
    found = diagnose.collisions(table)
    assert found["items_sharing_their_codes"] == 0.5
    assert found["items_per_first_code"] == 2.0 and found["largest_first_code"] == 3


def test_sasrec_is_read_by_first_code_and_within_it_from_its_own_scores(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    items, users, width = 40, 30, 5
    model = SASRec(items, hidden=8, layers=1, heads=1, dropout=0.0, max_len=width)
    config = {"hidden": 8, "layers": 1, "heads": 1, "dropout": 0.0, "max_len": width}
    state = {"state_dict": model.state_dict(), "num_items": items, "config": config}
    torch.save(state, tmp_path / MODEL)
    lengths = rng.integers(1, 8, users)
    valid = EvalSet(
        name="valid",
        users=np.arange(users),
        offsets=np.r_[0, np.cumsum(lengths)],
        history=rng.integers(0, items, lengths.sum()),
        targets=rng.integers(0, items, users),
    )
    table = torch.as_tensor(np.c_[rng.integers(0, 6, items), np.zeros((items, 2), int)])
    found = diagnose.sasrec_levels(tmp_path, valid, table)

    model.eval()
    first_ranks, oracle = [], []
    for user in range(users):
        seen = valid.history[valid.offsets[user] : valid.offsets[user + 1]][-width:]
        with torch.no_grad():
            scores = model(torch.as_tensor(seen + 1)[None])[0, -1] @ model.item_vectors.T
        target = int(valid.targets[user])
        first = table[:, 0]
        per_code = np.array([scores.softmax(0)[first == c].sum() for c in range(6)])
        order = np.argsort(-per_code, kind="stable")
        first_ranks.append(int(np.nonzero(order == int(first[target]))[0][0]))
        group = torch.nonzero(first == first[target]).squeeze(1)
        ranked = group[scores[group].argsort(descending=True)]
        oracle.append(int(torch.nonzero(ranked == target).item()))
    oracle, first_ranks = np.array(oracle), np.array(first_ranks)
    assert found["first_code"]["recall@1"] == (first_ranks < 1).mean()
    assert found["first_code"]["recall@5"] == (first_ranks < 5).mean()
    assert 0 < (first_ranks < 1).mean() < (first_ranks < 5).mean() < 1
    assert found["oracle_first_code"]["recall@1"] == (oracle < 1).mean()
    assert found["oracle_first_code"]["recall@5"] == (oracle < 5).mean()
    assert 0 < (oracle < 1).mean() < 1


def test_the_bands_split_the_users_by_their_first_codes_rank():
    first_ranks = np.array([0, 0, 1, 4, 5, 9, 10, 30])
    ranks = np.array([0, 12, 3, 50, 9, 10, 2, 11])
    split = diagnose.by_first_code(first_ranks, ranks)
    assert list(split) == ["1", "2-5", "6-10", ">10"]
    assert [band["users"] for band in split.values()] == [0.25, 0.25, 0.25, 0.25]
    assert [band["recall@10"] for band in split.values()] == [0.5, 0.5, 0.5, 0.5]
    assert diagnose.by_first_code(np.array([0]), np.array([3]))[">10"] == {
        "users": 0.0,
        "recall@10": 0.0,
    }
