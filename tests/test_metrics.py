import numpy as np
import pytest
import torch

from genrec.metrics import (
    count_ranks,
    dot_product_ranks,
    ranking_metrics,
    ranks_in_lists,
    sample_interval,
)


def dense_ranks(scores: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """The rule on the whole score matrix: other items scoring at least the target's come
    first; a NaN or -inf target ranks last."""
    scores = torch.nan_to_num(scores, nan=float("-inf"))
    own = scores.gather(1, targets[:, None])
    return ((scores >= own).sum(dim=1) - 1 + torch.isneginf(own[:, 0])).tolist()


def test_hand_computed_example():
    queries = torch.eye(3)
    items = torch.tensor([[0.1, 0.8, 0.0], [0.9, 0.1, 0.1], [0.5, 0.2, 0.2], [0.3, 0.4, 0.3]])
    ranks = dot_product_ranks(queries, items, torch.tensor([2, 0, 0]))
    assert ranks.tolist() == [1, 0, 3]
    m = ranking_metrics(ranks, ks=(1, 2))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3) + 1) / 3)


@pytest.mark.parametrize("user_batch, item_chunk", [(1024, 16_384), (5, 7), (1, 1)])
def test_blocks_rank_as_the_whole_matrix(user_batch, item_chunk):
    """Integer embeddings make exact ties, across block borders too."""
    g = torch.Generator().manual_seed(0)
    queries = torch.randint(-2, 3, (23, 4), generator=g).float()
    items = torch.randint(-2, 3, (31, 4), generator=g).float()
    targets = torch.randint(0, 31, (23,), generator=g)
    ranks = dot_product_ranks(queries, items, targets, user_batch, item_chunk)
    assert ranks.tolist() == dense_ranks(queries @ items.T, targets)


def test_nan_scores_never_look_perfect():
    queries = torch.tensor([[float("nan"), 1.0], [1.0, 0.0]])
    items = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.3, 0.0], [0.2, 0.0]])
    assert dot_product_ranks(queries, items, torch.tensor([1, 1])).tolist() == [4, 4]


def test_ranks_in_lists_marks_misses():
    ranked = np.array([[3, 1, 2], [0, 1, 2]])
    assert ranks_in_lists(ranked, np.array([2, 5])).tolist() == [2, 3]


def test_ties_never_favour_the_target():
    """Every item scoring as high as the target ranks before it: a constant model ranks every
    target last, and integer popularity counts gain nothing from their ties."""
    constant = dot_product_ranks(torch.zeros(2, 3), torch.zeros(5, 3), torch.tensor([0, 4]))
    assert constant.tolist() == [4, 4]
    assert ranking_metrics(constant)["recall@1"] == 0
    counts = np.array([3, 7, 3, 3, 1])
    assert count_ranks(counts, np.array([2, 1, 4, 0])).tolist() == [3, 0, 4, 3]


def test_popularity_ranks_as_the_whole_matrix():
    counts = np.random.default_rng(0).integers(0, 6, 50)
    targets = np.random.default_rng(1).integers(0, 50, 200)
    scores = torch.as_tensor(counts, dtype=torch.float32).expand(200, -1)
    assert count_ranks(counts, targets).tolist() == dense_ranks(scores, torch.from_numpy(targets))


def test_a_samples_interval_covers_the_full_value_95_times_in_100():
    """Samples of 1,000 of 2,000 users: the 95% interval (with the finite-population correction)
    covers the whole population's metric in 93-97% of 2,000 draws; all users: width 0."""
    rng = np.random.default_rng(0)
    population = np.minimum(rng.geometric(0.08, 2_000) - 1, 20)
    full = ranking_metrics(population)
    covered = {"recall@10": 0, "ndcg@10": 0}
    for _ in range(2_000):
        sample = population[rng.choice(population.size, 1_000, replace=False)]
        values, interval = ranking_metrics(sample), sample_interval(sample, population.size)
        for key in covered:
            covered[key] += abs(values[key] - full[key]) <= interval[key]
    assert all(0.93 <= hits / 2_000 <= 0.97 for hits in covered.values()), covered
    assert sample_interval(population, population.size)["recall@10"] == 0
