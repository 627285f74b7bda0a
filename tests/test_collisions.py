"""Making semantic ids unique: TIGER's dedup code and LETTER's Sinkhorn re-assignment."""

import numpy as np
import pytest

from genrec.tokenizers.collisions import collision_rate, dedup_codes, sinkhorn_resolve


def colliding(codes: np.ndarray) -> np.ndarray:
    """Mask of rows equal to some other row."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)] > 1


def random_codes(seed: int, n: int = 400, k: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Codes whose last level uses only 4 of k codes, so many items collide, and distances."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 6, size=(n, 3))
    codes[:, 2] %= 4
    return codes, rng.random((n, k)) * 3


def test_collision_rate_on_hand_example() -> None:
    codes = np.array([[0, 1], [0, 1], [0, 2], [1, 1], [0, 1], [1, 2]])
    assert collision_rate(codes) == pytest.approx(3 / 6)
    assert collision_rate(np.zeros((0, 2), dtype=np.int64)) == 0.0


def test_dedup_numbers_items_within_each_shared_id() -> None:
    codes = np.array([[3, 1], [0, 2], [3, 1], [0, 2], [5, 5], [3, 1]])
    deduped = dedup_codes(codes)
    assert np.array_equal(deduped[:, :2], codes)
    assert deduped[:, 2].tolist() == [0, 0, 1, 1, 0, 2]
    assert not colliding(deduped).any()


def test_dedup_on_many_random_codes() -> None:
    codes, _ = random_codes(0)
    deduped = dedup_codes(codes)
    assert deduped.shape == (len(codes), 4)
    assert np.array_equal(deduped[:, :3], codes)
    assert not colliding(deduped).any()
    assert dedup_codes(np.zeros((0, 3), dtype=np.int64)).shape == (0, 4)


def test_sinkhorn_resolves_every_collision_and_keeps_the_rest() -> None:
    codes, distances = random_codes(1)
    before = colliding(codes)
    assert before.mean() > 0.3
    resolved = sinkhorn_resolve(codes, distances)
    assert resolved.shape == codes.shape
    assert not colliding(resolved).any()
    assert np.array_equal(resolved[~before], codes[~before])
    assert np.array_equal(resolved[:, :2], codes[:, :2])
    assert np.array_equal(sinkhorn_resolve(codes, distances), resolved)


def test_sinkhorn_prefers_near_codes() -> None:
    codes, distances = random_codes(2)
    moved = colliding(codes)
    chosen = distances[np.arange(len(codes)), sinkhorn_resolve(codes, distances)[:, 2]]
    assert chosen[moved].mean() < 0.5 * distances[moved].mean()


def test_sinkhorn_finishes_after_max_rounds() -> None:
    codes, distances = random_codes(3)
    resolved = sinkhorn_resolve(codes, distances, max_rounds=0)
    assert not colliding(resolved).any()
    assert np.array_equal(resolved[:, :2], codes[:, :2])


def test_sinkhorn_single_level_and_full_codebook() -> None:
    codes = np.zeros((4, 1), dtype=np.int64)
    resolved = sinkhorn_resolve(codes, np.arange(16.0).reshape(4, 4))
    assert sorted(resolved[:, 0].tolist()) == [0, 1, 2, 3]


def test_sinkhorn_impossible_case_suggests_dedup() -> None:
    codes = np.array([[1, 0]] * 5 + [[2, 0]])
    with pytest.raises(ValueError, match=r"5 items share one code prefix.*collisions=dedup"):
        sinkhorn_resolve(codes, np.ones((6, 4)))


@pytest.mark.parametrize(
    ("codes", "distances", "message"),
    [
        (np.zeros(3, dtype=np.int64), np.ones((3, 2)), r"shape \[N, L\]"),
        (np.zeros((3, 2)), np.ones((3, 2)), "must be integers"),
        (np.zeros((3, 2), dtype=np.int64), np.ones((2, 2)), r"shape \[N=3, K\]"),
        (np.full((3, 2), 2), np.ones((3, 2)), "outside the 2 codes"),
        (np.zeros((2, 2), dtype=np.int64), np.array([[0.0, np.nan]] * 2), "NaN or infinite"),
    ],
)
def test_sinkhorn_rejects_bad_input(codes, distances, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sinkhorn_resolve(codes, distances)


def test_sinkhorn_rejects_non_positive_epsilon() -> None:
    with pytest.raises(ValueError, match="epsilon must be positive"):
        sinkhorn_resolve(np.zeros((2, 1), dtype=np.int64), np.ones((2, 2)), epsilon=0)
