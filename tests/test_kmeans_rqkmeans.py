"""k-means, balanced k-means and RQ-KMeans on planted clusters, plus their input checks."""

import numpy as np
import pytest
import torch

from genrec.tokenizers.kmeans import balanced_kmeans, kmeans, nearest
from genrec.tokenizers.report import code_report, usage_collapse_levels
from genrec.tokenizers.rqkmeans import RQKMeans

CLUSTERS, DIM, PER_CLUSTER = 8, 32, 100


@pytest.fixture(scope="module")
def planted() -> tuple[torch.Tensor, torch.Tensor]:
    """800 points in 8 well-separated Gaussian clusters (centres ~10 apart, unit noise)."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(CLUSTERS, DIM, generator=gen) * 5
    labels = torch.arange(CLUSTERS).repeat_interleave(PER_CLUSTER)
    points = centres[labels] + 0.5 * torch.randn(len(labels), DIM, generator=gen)
    return points, labels


def purity(truth: torch.Tensor, found: torch.Tensor) -> float:
    """Share of points whose found cluster's majority true label is their own."""
    table = np.zeros((int(found.max()) + 1, int(truth.max()) + 1), dtype=np.int64)
    np.add.at(table, (found.numpy(), truth.numpy()), 1)
    return table.max(1).sum() / len(truth)


def test_nearest_matches_brute_force_and_chunks() -> None:
    gen = torch.Generator().manual_seed(1)
    x, c = torch.randn(50, 4, generator=gen), torch.randn(7, 4, generator=gen)
    idx, sqdist = nearest(x, c, chunk=8)
    brute = torch.cdist(x, c).pow(2)
    assert torch.equal(idx, brute.argmin(1))
    assert torch.allclose(sqdist, brute.min(1).values, atol=1e-5)


def test_kmeans_recovers_planted_clusters(planted) -> None:
    points, labels = planted
    centroids = kmeans(points, CLUSTERS, seed=3)
    assert centroids.shape == (CLUSTERS, DIM)
    assert purity(labels, nearest(points, centroids)[0]) > 0.95


def test_kmeans_is_seeded() -> None:
    points = torch.randn(200, 5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(kmeans(points, 6, seed=4), kmeans(points, 6, seed=4))


def test_kmeans_uses_every_centroid_with_duplicate_points() -> None:
    points = torch.tensor([[0.0, 0.0]] * 50 + [[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 2)
    used = nearest(points, kmeans(points, 3))[0].unique()
    assert len(used) == 3


def test_balanced_kmeans_sizes_differ_by_at_most_one() -> None:
    gen = torch.Generator().manual_seed(5)
    skewed = torch.cat(
        [torch.randn(200, 16, generator=gen), torch.randn(56, 16, generator=gen) + 8]
    )
    labels, centroids = balanced_kmeans(skewed, 10)
    sizes = torch.bincount(labels, minlength=10)
    assert centroids.shape == (10, 16)
    assert sizes.sum() == 256
    assert sizes.max() - sizes.min() <= 1


def test_balanced_kmeans_keeps_planted_clusters_together(planted) -> None:
    points, labels = planted
    found, _ = balanced_kmeans(points, CLUSTERS, seed=1)
    assert torch.bincount(found).tolist() == [PER_CLUSTER] * CLUSTERS
    assert purity(labels, found) > 0.95


@pytest.mark.parametrize(
    ("points", "k", "message"),
    [
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1, "NaN or infinite"),
        (torch.zeros(4), 2, r"shape \[N, D\]"),
        (torch.zeros(0, 3), 1, "no points"),
        (torch.randn(3, 2), 5, r"between 1 and the number of points \(3\)"),
        (torch.ones(6, 2), 2, "2 clusters from 1 distinct points"),
    ],
)
def test_kmeans_rejects_bad_input(points: torch.Tensor, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kmeans(points, k)


def test_rqkmeans_first_level_finds_clusters(planted) -> None:
    points, labels = planted
    tok = RQKMeans(DIM, num_levels=3, codebook_size=CLUSTERS, iters=30)
    tok.fit(points)
    codes = tok.encode(points)
    assert codes.dtype == torch.int64
    assert codes.shape == (len(points), 3)
    assert purity(labels, codes[:, 0]) > 0.9
    assert torch.equal(codes, tok.encode(points))


def test_rqkmeans_state_dict_round_trip(planted, tmp_path) -> None:
    points, _ = planted
    tok = RQKMeans(DIM, num_levels=2, codebook_size=16, iters=10, seed=7)
    tok.fit(points)
    torch.save(tok.state_dict(), tmp_path / "tok.pt")
    fresh = RQKMeans(DIM, num_levels=2, codebook_size=16)
    fresh.load_state_dict(torch.load(tmp_path / "tok.pt"))
    assert torch.equal(fresh.encode(points), tok.encode(points))
    assert torch.equal(fresh.last_level_distances(points), tok.last_level_distances(points))


def test_rqkmeans_error_falls_with_levels_and_reports_once(planted) -> None:
    points, _ = planted
    logs = []
    errors = []
    for levels in (1, 2, 3):
        tok = RQKMeans(DIM, num_levels=levels, codebook_size=16, iters=10)
        tok.fit(points, on_epoch=lambda epoch, t, log: logs.append((epoch, t, log)))
        errors.append(tok.reconstruction_error(points))
    assert errors[0] > errors[1] > errors[2]
    assert [(epoch, log["reconstruction_error"]) for epoch, _, log in logs] == list(
        zip([0, 0, 0], errors, strict=True)
    )


def test_rqkmeans_last_level_distances_pick_the_last_code(planted) -> None:
    points, _ = planted
    tok = RQKMeans(DIM, num_levels=2, codebook_size=8, iters=10)
    tok.fit(points)
    distances = tok.last_level_distances(points)
    assert distances.shape == (len(points), 8)
    assert torch.equal(distances.argmin(1), tok.encode(points)[:, -1])


def test_rqkmeans_rejects_bad_input() -> None:
    tok = RQKMeans(4, num_levels=2, codebook_size=8)
    with pytest.raises(ValueError, match="NaN or infinite"):
        tok.fit(torch.full((20, 4), float("nan")))
    with pytest.raises(ValueError, match=r"shape \[N, 4\]"):
        tok.fit(torch.randn(20, 5))
    with pytest.raises(ValueError, match="no vectors"):
        tok.fit(torch.zeros(0, 4))
    with pytest.raises(ValueError, match=r"level 0: .*between 1 and the number of points \(5\)"):
        tok.fit(torch.randn(5, 4))
    with pytest.raises(ValueError, match="codebook_size must be at least 1"):
        RQKMeans(4, num_levels=2, codebook_size=0)


def test_code_report_usage_perplexity_and_collapse() -> None:
    codes = np.array([[0, 1], [0, 1], [1, 1], [2, 1]])
    report = code_report(codes, codebook_size=4)
    first, second = report["levels"]
    assert (first["used"], first["usage"], second["used"], second["usage"]) == (3, 0.75, 1, 0.25)
    assert first["perplexity"] == pytest.approx(np.exp(1.5 * np.log(2)))
    assert second["perplexity"] == pytest.approx(1.0)
    assert report["collision_rate"] == 0.5
    assert usage_collapse_levels(report, threshold=0.5) == [1]
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        code_report(codes, codebook_size=2)


def test_codewords_are_seeded_even_from_fewer_distinct_residuals_than_codes():
    """A deep level's residuals can hold fewer distinct points than its codebook (a small
    catalogue): every distinct point becomes a codeword and the rest jittered copies, so the
    RQ-VAE's k-means init never fails where k-means itself must."""
    from genrec.tokenizers.kmeans import seed_codewords

    points = torch.cat([torch.zeros(20, 4), torch.randn(5, 4)])
    codewords = seed_codewords(points, 16, seed=0)
    assert codewords.shape == (16, 4) and torch.isfinite(codewords).all()
    distinct = torch.unique(points, dim=0)
    assert all((codewords - row).abs().sum(1).min() == 0 for row in distinct)
    many = torch.randn(100, 4)
    assert torch.equal(seed_codewords(many, 8, seed=1), kmeans(many, 8, seed=1))
