"""Full-ranking metrics with one target per user: Recall@K (= hit rate) and NDCG@K."""

from collections.abc import Callable

import numpy as np
import torch

KS = (1, 5, 10, 20)
SCORE_BATCH = 1024


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among all items, ties broken against the target: every
    other item scoring at least as high comes first, so a model that scores items alike (the
    popularity baseline's integer counts, a collapsed model) gains nothing from the ties.

    NaN scores count as the lowest, so a diverged model cannot look perfect.
    """
    scores = torch.nan_to_num(scores, nan=float("-inf"))
    target_scores = scores.gather(1, targets[:, None])
    return (scores >= target_scores).sum(dim=1) - 1 + torch.isneginf(target_scores[:, 0])


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


def full_ranking_metrics(
    score: Callable[[np.ndarray], torch.Tensor], targets: np.ndarray
) -> dict[str, float]:
    """Recall/NDCG of each target among all items; `score(rows)` gives [len(rows), num_items]."""
    ranks = []
    for start in range(0, targets.size, SCORE_BATCH):
        rows = np.arange(start, min(start + SCORE_BATCH, targets.size))
        scores = score(rows)
        ranks.append(target_ranks(scores, torch.as_tensor(targets[rows], device=scores.device)))
    return ranking_metrics(torch.cat(ranks).cpu().numpy())
