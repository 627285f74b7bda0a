"""Full-ranking metrics with one target per user: Recall@K (= hit rate) and NDCG@K."""

import numpy as np
import torch

KS = (1, 5, 10, 20)
USER_BATCH = 1024
# Items scored at once: a [USER_BATCH, ITEM_CHUNK] float block is 64 MiB.
ITEM_CHUNK = 16_384


def dot_product_ranks(
    queries: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    user_batch: int = USER_BATCH,
    item_chunk: int = ITEM_CHUNK,
) -> np.ndarray:
    """0-based rank of each target among all items under the scores queries @ items.T, scored
    one block of users by one block of items at a time, so memory grows with the blocks, not
    with users x items. Ties are broken against the target: every other item scoring at least
    as high comes first, so a model that scores items alike (a collapsed model) gains nothing
    from the ties. NaN scores count as the lowest, so a diverged model cannot look perfect.
    """
    ranks = []
    for rows in torch.arange(len(queries)).split(user_batch):
        query, target = queries[rows], targets[rows].to(queries.device)
        own = torch.nan_to_num((query * items[target]).sum(-1), nan=float("-inf"))
        above = torch.isneginf(own).long()  # a target scored NaN or -inf ranks last
        for start in range(0, len(items), item_chunk):
            scores = torch.nan_to_num(query @ items[start : start + item_chunk].T, nan=-torch.inf)
            at_least = scores >= own[:, None]
            inside = (target >= start) & (target < start + scores.shape[1])
            at_least[inside, target[inside] - start] = False  # the target itself
            above += at_least.sum(dim=1)
        ranks.append(above)
    return torch.cat(ranks).cpu().numpy() if ranks else np.zeros(0, dtype=np.int64)


def count_ranks(counts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Ranks as `dot_product_ranks` gives them for one score per item shared by every user
    (popularity's training counts): the other items counted at least as often as the target.
    A sort and a binary search per user, so it grows with users + items, not their product."""
    ordered = np.sort(counts)
    return counts.size - np.searchsorted(ordered, counts[targets], side="left") - 1


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


def sample_interval(
    ranks: np.ndarray, population: int, ks: tuple[int, ...] = KS, z: float = 1.96
) -> dict[str, float]:
    """Half-width of each metric's 95% interval when `ranks` are a uniform sample without
    replacement of `population` users: the normal approximation of the mean of the users'
    values, with the finite-population correction (0 when the sample is everyone)."""
    ranks = np.asarray(ranks)
    n = ranks.size
    if n < 2:
        raise ValueError("an interval needs a sample of two users or more")
    correction = np.sqrt(max(population - n, 0) / max(population - 1, 1))
    gains = 1.0 / np.log2(ranks + 2.0)
    out = {}
    for k in ks:
        hit = ranks < k
        for name, values in ((f"recall@{k}", hit), (f"ndcg@{k}", gains * hit)):
            out[name] = float(z * values.std(ddof=1) / np.sqrt(n) * correction)
    return out
