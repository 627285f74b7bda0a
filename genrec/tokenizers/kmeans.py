"""k-means on torch tensors: the codebook initialiser of the VQ tokenizers, RQ-KMeans' only step,
and (size-balanced) LETTER's clustering of codebook vectors.

Everything is batched over points; the only Python loops run over chunks, centroids during
k-means++ seeding, and iterations.
"""

import torch
from torch import Tensor


def nearest(x: Tensor, centroids: Tensor, chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """Index of and squared L2 distance to each point's nearest centroid.

    Chunked over points so that the [chunk, K] distance block, not [N, K], bounds memory.
    """
    centroid_sq = centroids.pow(2).sum(1)
    indices, sqdists = [], []
    for block in x.split(chunk):
        dist = squared_distances(block, centroids, centroid_sq)
        sqdist, idx = dist.min(1)
        indices.append(idx)
        sqdists.append(sqdist)
    if not indices:
        return x.new_zeros(0, dtype=torch.long), x.new_zeros(0)
    return torch.cat(indices), torch.cat(sqdists)


def squared_distances(
    x: Tensor, centroids: Tensor, centroid_sq: Tensor | None = None, x_sq: Tensor | None = None
) -> Tensor:
    """[N, K] squared L2 distances via ||x||² - 2x·c + ||c||², clamped at 0 against rounding.

    Callers that reuse the same points or centroids pass their squared norms in precomputed.
    """
    if centroid_sq is None:
        centroid_sq = centroids.pow(2).sum(1)
    if x_sq is None:
        x_sq = x.pow(2).sum(1)
    dist = (x @ centroids.T).mul_(-2).add_(x_sq.unsqueeze(1)).add_(centroid_sq)
    return dist.clamp_min_(0)


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int = 50, seed: int = 0) -> Tensor:
    """Centroids [k, D] from k-means++ seeding and Lloyd iterations.

    Empty clusters are re-seeded from the points farthest from their centroid, so all k
    centroids stay in use; needs at least k distinct points for that to be possible.
    """
    x = _check_points(x, k, "k-means")
    distinct = distinct_lower_bound(x, k)
    if distinct < k:
        raise ValueError(
            f"k-means: cannot make {k} clusters from {distinct} distinct points; "
            "use a smaller codebook or more items"
        )
    generator = torch.Generator(device=x.device).manual_seed(seed)
    centroids = kmeans_plus_plus(x, k, generator)
    labels = None
    for _ in range(iters):
        new_labels, sqdist = nearest(x, centroids)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        centroids = _update_centroids(x, labels, sqdist, centroids)
    return centroids


@torch.no_grad()
def seed_codewords(x: Tensor, k: int, iters: int = 50, seed: int = 0) -> Tensor:
    """k codewords for a codebook: k-means centroids, or where the points hold fewer than k
    distinct rows (the residuals below a level whose codes already tell most items apart, on
    a small catalogue) every distinct row plus jittered copies of them for the rest; those
    stay unused until a dead-code restart re-seats them."""
    if distinct_lower_bound(x, k) >= k:
        return kmeans(x, k, iters, seed)
    distinct = torch.unique(x, dim=0)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    picks = torch.randint(len(distinct), (k - len(distinct),), generator=generator, device=x.device)
    scale = x.std().clamp_min(1e-6) * 1e-3
    noise = torch.randn((len(picks), x.shape[1]), generator=generator, device=x.device)
    return torch.cat([distinct, distinct[picks] + scale * noise])


@torch.no_grad()
def balanced_kmeans(x: Tensor, k: int, iters: int = 20, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Labels [N] and centroids [k, D] of a k-means whose clusters hold ⌊N/k⌋ or ⌈N/k⌉ points.

    LETTER clusters the codebook vectors this way so that its diversity regulariser pulls codes
    apart evenly instead of letting one cluster swallow most of them.
    """
    x = _check_points(x, k, "balanced k-means")
    generator = torch.Generator(device=x.device).manual_seed(seed)
    labels = balanced_assign(squared_distances(x, kmeans_plus_plus(x, k, generator)))
    for _ in range(iters):
        new_labels = balanced_assign(squared_distances(x, _cluster_means(x, labels, k)))
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels, _cluster_means(x, labels, k)


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centroid is drawn with probability ∝ squared distance.

    Where every point already coincides with a centroid (duplicates), draws uniformly.
    """
    x_sq = x.pow(2).sum(1)
    pick = torch.randint(x.shape[0], (1,), generator=generator, device=x.device)
    centroids = [x[pick]]
    closest = squared_distances(x, x[pick], x_sq[pick], x_sq).squeeze(1)
    for _ in range(1, k):
        weights = closest if closest.sum() > 0 else torch.ones_like(closest)
        pick = torch.multinomial(weights, 1, generator=generator)
        centroids.append(x[pick])
        closest = torch.minimum(closest, squared_distances(x, x[pick], x_sq[pick], x_sq).squeeze(1))
    return torch.cat(centroids)


def balanced_assign(dist: Tensor) -> Tensor:
    """Labels [N] minimising distance greedily under capacities ⌊N/K⌋ / ⌈N/K⌉.

    Runs in rounds: every unassigned point proposes to its nearest open cluster and each
    cluster accepts proposers up to its free capacity, those with the largest gap to their
    second choice (most to lose) first. A round either places everyone or fills a cluster,
    so there are at most K + 1 rounds. The N mod K extra slots go to the clusters nearest to
    most points.
    """
    n, k = dist.shape
    capacity = torch.full((k,), n // k, dtype=torch.long, device=dist.device)
    demand = torch.bincount(dist.argmin(1), minlength=k)
    extra = torch.sort(demand, descending=True, stable=True).indices[: n % k]
    capacity[extra] += 1
    labels = torch.full((n,), -1, dtype=torch.long, device=dist.device)
    while (labels < 0).any():
        open_dist = dist.masked_fill(capacity == 0, float("inf"))
        pending = (labels < 0).nonzero().squeeze(1)
        choice, gap = _choice_and_gap(open_dist[pending])
        accepted = _accept_within_capacity(choice, gap, capacity)
        labels[pending[accepted]] = choice[accepted]
        capacity -= torch.bincount(choice[accepted], minlength=k)
    return labels


def _choice_and_gap(dist: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest column per row and its margin over the second nearest (inf if only one)."""
    if dist.shape[1] == 1:
        return torch.zeros(dist.shape[0], dtype=torch.long, device=dist.device), dist[:, 0]
    top = dist.topk(2, dim=1, largest=False)
    return top.indices[:, 0], top.values[:, 1] - top.values[:, 0]


def _accept_within_capacity(choice: Tensor, gap: Tensor, capacity: Tensor) -> Tensor:
    """Mask of proposers each cluster accepts: its largest-gap ones, up to its capacity."""
    by_gap = torch.sort(gap, descending=True, stable=True).indices
    order = by_gap[torch.sort(choice[by_gap], stable=True).indices]
    sorted_choice = choice[order]
    position = torch.arange(len(order), device=choice.device)
    first = torch.searchsorted(sorted_choice, sorted_choice)
    accepted = torch.zeros_like(choice, dtype=torch.bool)
    accepted[order] = (position - first) < capacity[sorted_choice]
    return accepted


def _update_centroids(x: Tensor, labels: Tensor, sqdist: Tensor, centroids: Tensor) -> Tensor:
    """Cluster means, with empty clusters moved onto the points farthest from their centroid."""
    k = centroids.shape[0]
    counts = torch.bincount(labels, minlength=k)
    updated = _cluster_means(x, labels, k)
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty):
        farthest = sqdist.topk(len(empty)).indices
        updated[empty] = x[farthest]
    return updated


def _cluster_means(x: Tensor, labels: Tensor, k: int) -> Tensor:
    sums = x.new_zeros(k, x.shape[1]).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).clamp_min(1).to(x.dtype)
    return sums / counts.unsqueeze(1)


def _check_points(x: Tensor, k: int, what: str) -> Tensor:
    """The points as a float tensor, or a ValueError saying what is wrong with them."""
    if x.ndim != 2:
        raise ValueError(f"{what}: expected points of shape [N, D], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: got no points")
    if not x.is_floating_point():
        x = x.float()
    bad = (~torch.isfinite(x)).any(1).sum().item()
    if bad:
        raise ValueError(f"{what}: {bad} of {x.shape[0]} points contain NaN or infinite values")
    if k < 1 or k > x.shape[0]:
        raise ValueError(f"{what}: k={k} must be between 1 and the number of points ({x.shape[0]})")
    return x.detach()


def distinct_lower_bound(x: Tensor, k: int) -> int:
    """Number of distinct rows, computed exactly only where a cheap bound falls below k.

    Equal rows project equally onto a random direction, so distinct projections never
    overcount distinct rows.
    """
    direction = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(0))
    projected = x.double() @ direction.to(device=x.device, dtype=torch.double)
    bound = torch.unique(projected).numel()
    return bound if bound >= k else torch.unique(x, dim=0).shape[0]
