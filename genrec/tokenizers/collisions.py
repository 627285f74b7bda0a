"""Making semantic ids unique: two items with the same full id could not be told apart by the
generative recommender.

`dedup_codes` is TIGER's fix (an extra level numbering the items of a shared id);
`sinkhorn_resolve` is LETTER's (move colliding items to other free last-level codes, chosen by a
balanced optimal-transport plan so that they spread over the codebook near their vectors).
"""

import numpy as np

SINKHORN_HINT = "set tokenizer.collisions=dedup, or raise tokenizer.codebook_size"


def dedup_codes(codes: np.ndarray) -> np.ndarray:
    """[N, L + 1] codes whose extra last column numbers the items of each shared id 0, 1, ...

    Items are numbered in their row order, so the first item of every id gets 0.
    """
    codes = _check_codes(codes)
    groups = _row_groups(codes)
    return np.column_stack([codes, _rank_within_groups(groups)])


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full id also belongs to another item."""
    codes = _check_codes(codes)
    if len(codes) == 0:
        return 0.0
    groups = _row_groups(codes)
    return float(np.mean(np.bincount(groups)[groups] > 1))


def sinkhorn_resolve(
    codes: np.ndarray,
    last_distances: np.ndarray,
    epsilon: float = 0.05,
    iters: int = 50,
    max_rounds: int = 20,
) -> np.ndarray:
    """Codes [N, L] with no shared full id, changing only the last code of colliding items.

    Each round, the still-colliding items of every prefix (first L-1 codes) get a Sinkhorn plan
    over the last-level codes no other item of that prefix holds, with uniform marginals and the
    distances as cost; each item proposes its highest-mass code and, per code, the proposer with
    the most mass takes it. Every round settles at least one item per prefix, so this ends;
    after `max_rounds` rounds the rest take their nearest free code without a new plan.
    Deterministic, as it uses no randomness.
    """
    if epsilon <= 0:
        raise ValueError(f"sinkhorn epsilon must be positive, got {epsilon}")
    codes = _check_codes(codes)
    distances = _check_distances(last_distances, codes)
    prefix = _row_groups(codes[:, :-1])
    _check_feasible(prefix, distances.shape[1])
    full = _row_groups(codes)
    resolved = np.bincount(full)[full] == 1
    pending, group, taken = _pending_groups(prefix, codes[:, -1], resolved, distances.shape[1])
    codes = codes.copy()
    round_ = 0
    while len(pending):
        free = ~taken[group]
        if round_ < max_rounds:
            score = _sinkhorn_plan(distances[pending], free, group, epsilon, iters)
        else:
            score = -distances[pending]
        score[~free] = -np.inf
        winners, choice = _claim_codes(score, group)
        codes[pending[winners], -1] = choice
        taken[group[winners], choice] = True
        left = np.ones(len(pending), dtype=bool)
        left[winners] = False
        pending, group = pending[left], group[left]
        round_ += 1
    return codes


def extend_dedup(existing: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """IDs [M, L + 1] for new items' codes [M, L] beside existing IDs [N, L + 1] made by
    `dedup_codes`: the existing IDs stay, each new item takes the next free dedup number of its
    codes, so the whole table is unique."""
    existing, codes = _check_codes(existing), _check_codes(codes)
    groups = _row_groups(np.concatenate([existing[:, :-1], codes]))
    next_free = np.zeros(groups.max(initial=0) + 1, dtype=np.int64)
    np.maximum.at(next_free, groups[: len(existing)], existing[:, -1] + 1)
    new = groups[len(existing) :]
    return np.column_stack([codes, next_free[new] + _rank_within_groups(new)])


def extend_nearest_free(
    existing: np.ndarray, codes: np.ndarray, last_distances: np.ndarray
) -> np.ndarray:
    """IDs [M, L + 1] for new items beside existing IDs made by `sinkhorn_resolve` (plus the
    zero column): the existing IDs stay, each new item, in order, takes the nearest last-level
    code its prefix has free. A Sinkhorn plan is not redone, as it would move existing items."""
    existing, codes = _check_codes(existing), _check_codes(codes)
    distances = _check_distances(last_distances, codes)
    taken = {tuple(row) for row in existing[:, :-1].tolist()}
    out = codes.copy()
    for i, row in enumerate(codes.tolist()):
        for code in np.argsort(distances[i], kind="stable").tolist():
            if (*row[:-1], code) not in taken:
                break
        else:
            raise ValueError(
                f"new item {i}: every last-level code of its prefix {row[:-1]} is taken; "
                f"{SINKHORN_HINT}"
            )
        out[i, -1] = code
        taken.add((*row[:-1], code))
    return np.column_stack([out, np.zeros(len(out), dtype=np.int64)])


def _pending_groups(
    prefix: np.ndarray, last: np.ndarray, resolved: np.ndarray, num_codes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colliding items sorted by prefix, their prefix's group index, and its taken codes [G, K].

    Only prefixes with collisions get a row, so memory follows the collisions, not N.
    """
    pending = np.flatnonzero(~resolved)
    active, group = np.unique(prefix[pending], return_inverse=True)
    order = np.argsort(group, kind="stable")
    holders = resolved & np.isin(prefix, active)
    taken = np.zeros((len(active), num_codes), dtype=bool)
    taken[np.searchsorted(active, prefix[holders]), last[holders]] = True
    return pending[order], group[order], taken


def _sinkhorn_plan(
    distances: np.ndarray, free: np.ndarray, groups: np.ndarray, epsilon: float, iters: int
) -> np.ndarray:
    """Entropic transport plan [M, K] between items (mass 1 each) and their group's free codes.

    Items are sorted by group; each group spreads its items evenly over its free codes, which
    are at least as many as its items. Costs are rescaled to [-1, 1] as in LETTER, so `epsilon`
    means the same whatever the distances' scale, then shifted per item so that each item's
    nearest free code has kernel 1 and nothing overflows. Works on the transpose [K, M] so that
    the per-group sums run over contiguous memory.
    """
    cost = np.where(free, _rescale(distances, free), np.inf)
    kernel = np.exp((cost.min(1, keepdims=True) - cost) / epsilon).T.copy()
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    sizes = np.diff(np.r_[starts, len(groups)])
    member = np.repeat(np.arange(len(starts)), sizes)
    group_free = free[starts].T
    target = np.where(group_free, sizes / group_free.sum(0), 0.0)
    code_scale = group_free.astype(np.float64)
    for _ in range(iters):
        item_scale = 1 / np.einsum("km,km->m", kernel, code_scale[:, member])
        code_mass = np.add.reduceat(kernel * item_scale, starts, axis=1)
        code_scale = target / np.maximum(code_mass, np.finfo(np.float64).tiny)
    item_scale = 1 / np.einsum("km,km->m", kernel, code_scale[:, member])
    return (kernel * item_scale * code_scale[:, member]).T


def _claim_codes(score: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the items that win their best-scoring code within their group, and the codes.

    Ties go to the earlier item.
    """
    choice = score.argmax(1)
    best = score[np.arange(len(score)), choice]
    order = np.lexsort((np.arange(len(score)), -best, choice, groups))
    key = np.column_stack([groups[order], choice[order]])
    first = np.r_[True, (key[1:] != key[:-1]).any(1)]
    winners = order[first]
    return winners, choice[winners]


def _rescale(distances: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Distances mapped linearly so the free entries span [-1, 1]."""
    low, high = distances[free].min(), distances[free].max()
    middle = (low + high) / 2
    return (distances - middle) / ((high - low) / 2 + 1e-12)


def _row_groups(codes: np.ndarray) -> np.ndarray:
    """Group id [N] per row, equal exactly for equal rows (all 0 for zero columns)."""
    if codes.shape[1] == 0 or len(codes) == 0:
        return np.zeros(len(codes), dtype=np.int64)
    return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)


def _rank_within_groups(groups: np.ndarray) -> np.ndarray:
    """Position [N] of each row among the rows of its group, in row order."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.searchsorted(sorted_groups, sorted_groups)
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(groups)) - starts
    return rank


def _check_feasible(prefix: np.ndarray, num_codes: int) -> None:
    sizes = np.bincount(prefix)
    if len(sizes) and sizes.max() > num_codes:
        raise ValueError(
            f"sinkhorn collision resolution: {sizes.max()} items share one code prefix but the "
            f"last level has only {num_codes} codes, so they cannot all get distinct ids; "
            f"{SINKHORN_HINT}"
        )


def _check_codes(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(f"codes must have shape [N, L] with L >= 1, got {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.size and codes.min() < 0:
        raise ValueError("codes must be non-negative")
    return codes.astype(np.int64, copy=False)


def _check_distances(distances: np.ndarray, codes: np.ndarray) -> np.ndarray:
    distances = np.asarray(distances, dtype=np.float64)
    if distances.ndim != 2 or len(distances) != len(codes):
        raise ValueError(
            f"last_distances must have shape [N={len(codes)}, K], got {distances.shape}"
        )
    if len(codes) and codes[:, -1].max() >= distances.shape[1]:
        raise ValueError(
            f"last-level code {codes[:, -1].max()} is outside the {distances.shape[1]} "
            "codes that last_distances covers"
        )
    if not np.isfinite(distances).all():
        raise ValueError("last_distances contain NaN or infinite values")
    return distances
