"""Full-ranking metrics with one target per user: Recall@K (= hit rate) and NDCG@K."""

import numpy as np
import torch

KS = (1, 5, 10, 20)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among all items (items scoring strictly higher come first).

    NaN scores count as the lowest, so a diverged model cannot look perfect.
    """
    scores = torch.nan_to_num(scores, nan=float("-inf"))
    target_scores = scores.gather(1, targets[:, None])
    ranks = (scores > target_scores).sum(dim=1)
    return torch.where(
        torch.isinf(target_scores[:, 0]) & (target_scores[:, 0] < 0),
        torch.full_like(ranks, scores.shape[1]),
        ranks,
    )


def ranks_in_lists(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank of each target in its ranked list; len(list) where the target is absent."""
    hits = ranked == targets[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), ranked.shape[1])


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no examples to evaluate")
    gains = 1.0 / np.log2(ranks + 2.0)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float((gains * hit).mean())
    return out
