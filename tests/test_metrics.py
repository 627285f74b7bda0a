import numpy as np
import pytest
import torch

from genrec.metrics import ranking_metrics, ranks_in_lists, target_ranks


def test_hand_computed_example():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.8, 0.1, 0.2, 0.4], [0.0, 0.1, 0.2, 0.3]])
    ranks = target_ranks(scores, torch.tensor([2, 0, 0]))
    assert ranks.tolist() == [1, 0, 3]
    m = ranking_metrics(ranks.numpy(), ks=(1, 2))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3) + 1) / 3)


def test_nan_scores_never_look_perfect():
    scores = torch.tensor([[float("nan")] * 4, [0.1, float("nan"), 0.3, 0.2]])
    assert target_ranks(scores, torch.tensor([1, 1])).tolist() == [4, 4]


def test_ranks_in_lists_marks_misses():
    ranked = np.array([[3, 1, 2], [0, 1, 2]])
    assert ranks_in_lists(ranked, np.array([2, 5])).tolist() == [2, 3]


def test_ties_never_favour_the_target():
    """Every item scoring as high as the target ranks before it: a constant model ranks every
    target last, and integer popularity counts gain nothing from their ties."""
    constant = torch.zeros(2, 5)
    assert target_ranks(constant, torch.tensor([0, 4])).tolist() == [4, 4]
    counts = torch.tensor([[3.0, 7.0, 3.0, 3.0, 1.0]])
    assert target_ranks(counts, torch.tensor([2])).tolist() == [3]
    assert target_ranks(counts, torch.tensor([1])).tolist() == [0]
    assert ranking_metrics(target_ranks(constant, torch.tensor([0, 4])).numpy())["recall@1"] == 0
