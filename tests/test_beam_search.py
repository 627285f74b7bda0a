"""Constrained beam search: exact at full width, valid IDs only, and the trie it walks."""

import numpy as np
import pytest
import torch

from genrec.trainer.beam_search import beam_search
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.trie import ItemTrie

K, D = 8, 3


@pytest.fixture(scope="module")
def model() -> GenerativeRecommender:
    torch.manual_seed(0)
    config = ModelConfig.preset(
        "tiny", codebook_size=K, dedup_size=D, max_history_items=6, dropout=0.0
    )
    return GenerativeRecommender(config).eval()


def catalogue(n: int, seed: int = 0) -> np.ndarray:
    """n distinct IDs drawn from a skewed space, in random item order."""
    rng = np.random.default_rng(seed)
    codes = np.c_[rng.integers(0, K, (4 * n, 3)) // [1, 2, 1], rng.integers(0, D, (4 * n, 1))]
    codes = np.unique(codes, axis=0)[:n]
    return codes[rng.permutation(len(codes))]


def histories(codes: np.ndarray, users: int, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    history = torch.as_tensor(codes[rng.integers(0, len(codes), (users, 4))])
    history[0, :2] = -1
    history[1, :3] = -1
    return history


def exhaustive_scores(
    model, history: torch.Tensor, codes: torch.Tensor, first_code_weight: float = 1.0
) -> torch.Tensor:
    """Every item's full-ID log-probability by teacher forcing, one user at a time (the first
    code's weighted)."""
    scores = []
    with torch.no_grad():
        for row in history:
            logits = model(row.expand(len(codes), -1, -1), codes)
            logp = logits.log_softmax(-1).gather(2, codes[..., None]).squeeze(-1)
            logp[:, 0] *= first_code_weight
            scores.append(logp.sum(1))
    return torch.stack(scores)


def test_full_width_beam_is_the_exact_ranking(model):
    codes = catalogue(60)
    history = histories(codes, 5)
    items, scores = beam_search(model, ItemTrie.from_codes(codes), history, beam_size=64)
    n = len(codes)
    assert (items[:, n:] == -1).all() and torch.isinf(scores[:, n:]).all()
    exact = exhaustive_scores(model, history, torch.as_tensor(codes))
    expected = exact.argsort(dim=1, descending=True)
    assert torch.equal(items[:, :n], expected)
    assert torch.allclose(scores[:, :n], exact.gather(1, expected), atol=1e-4)


def test_a_first_code_weight_reranks_as_the_weighted_exhaustive_scores(model):
    """Below 1 the items of the model's later choices of first code move up."""
    codes = catalogue(60)
    history = histories(codes, 5)
    trie = ItemTrie.from_codes(codes)
    plain, _ = beam_search(model, trie, history, beam_size=64)
    items, scores = beam_search(model, trie, history, beam_size=64, first_code_weight=0.3)
    exact = exhaustive_scores(model, history, torch.as_tensor(codes), first_code_weight=0.3)
    expected = exact.argsort(dim=1, descending=True)
    assert torch.equal(items[:, : len(codes)], expected)
    assert torch.allclose(scores[:, : len(codes)], exact.gather(1, expected), atol=1e-4)
    assert not torch.equal(items, plain)


def test_narrow_beam_returns_distinct_valid_items_best_first(model):
    codes = catalogue(200, seed=3)
    history = histories(codes, 7, seed=4)
    items, scores = beam_search(model, ItemTrie.from_codes(codes), history, beam_size=10)
    assert items.shape == (7, 10)
    assert ((items >= 0) & (items < len(codes))).all()
    assert all(len(set(row)) == 10 for row in items.tolist())
    assert (scores[:, 1:] <= scores[:, :-1] + 1e-6).all()
    exact = exhaustive_scores(model, history, torch.as_tensor(codes))
    assert torch.allclose(scores, exact.gather(1, items), atol=1e-4)


def test_trie_children_are_the_catalogue_prefixes():
    codes = np.array([[2, 0, 1, 0], [0, 1, 1, 0], [0, 1, 1, 1], [0, 3, 0, 0]])
    trie = ItemTrie.from_codes(codes)
    child, code, valid = trie.children(0, torch.tensor([0]))
    assert code[valid].tolist() == [0, 2]
    first = child[valid][0]
    child, code, valid = trie.children(1, first[None])
    assert code[valid].tolist() == [1, 3]
    assert trie.max_children == [2, 2, 1, 2]
    assert sorted(trie.leaf_item.tolist()) == [0, 1, 2, 3]


def test_trie_rejects_shared_ids():
    with pytest.raises(ValueError, match=r"items 1 and 3 share the semantic ID \[0, 1, 1, 0\]"):
        ItemTrie.from_codes(np.array([[2, 0, 1, 0], [0, 1, 1, 0], [0, 1, 1, 1], [0, 1, 1, 0]]))


def test_trie_depth_must_match_the_model(model):
    trie = ItemTrie.from_codes(np.array([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="IDs of 2 codes but the model decodes 4"):
        beam_search(model, trie, torch.zeros(1, 1, 4, dtype=torch.long), beam_size=2)
