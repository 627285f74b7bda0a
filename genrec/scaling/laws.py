"""Scaling-law fits that are checked: power laws along one axis, the compute frontier, the
joint form L(N, D) = E + A/N^alpha + B/D^beta with bootstrap intervals, and for each a
held-out check (fit without the largest points, predict them) whose failure is reported.

Fits minimise squared log residuals, as Hoffmann et al. (2022) do, from several starts; each
axis is scaled by its geometric mean so that one set of starts suits any units.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import least_squares

ALPHA_STARTS = (0.1, 0.3, 0.7, 1.5)
FLOOR_STARTS = (0.0, 0.5, 0.9)  # E as a share of the smallest y
MAX_EXPONENT = 4.0


@dataclass(frozen=True)
class PowerLaw:
    """y = E + A * x^-alpha."""

    E: float
    A: float
    alpha: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.E + self.A * np.power(np.asarray(x, dtype=float), -self.alpha)


@dataclass(frozen=True)
class JointLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def __call__(self, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A * np.power(n, -self.alpha) + self.B * np.power(d, -self.beta)


def _geomean(x: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(x))))


def _best(residuals: Callable[[np.ndarray], np.ndarray], starts, lower, upper) -> np.ndarray:
    """The least-squares solution with the lowest cost over the starts."""
    best = None
    for start in starts:
        start = np.clip(start, lower, upper)
        result = least_squares(residuals, start, bounds=(lower, upper), method="trf")
        if best is None or result.cost < best.cost:
            best = result
    return best.x


def fit_power_law(x: np.ndarray, y: np.ndarray) -> PowerLaw:
    """E + A x^-alpha through the points, with 0 <= E < min(y)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    scale, top = _geomean(x), float(y.min()) * (1 - 1e-9)
    u = x / scale

    def residuals(p: np.ndarray) -> np.ndarray:
        e, log_a, alpha = p
        return np.log(e + np.exp(log_a) * u**-alpha) - np.log(y)

    starts = [
        [share * top, np.log(max(y.mean() - share * top, 1e-12)), alpha]
        for share in FLOOR_STARTS
        for alpha in ALPHA_STARTS
    ]
    e, log_a, alpha = _best(residuals, starts, [0.0, -50.0, 0.0], [top, 50.0, MAX_EXPONENT])
    return PowerLaw(float(e), float(np.exp(log_a) * scale**alpha), float(alpha))


def fit_joint(
    n: np.ndarray, d: np.ndarray, y: np.ndarray, near: JointLaw | None = None
) -> JointLaw:
    """E + A/N^alpha + B/D^beta through the points, with 0 <= E < min(y); from the grid of
    starts, or from `near` alone (a bootstrap refit starts from the full fit)."""
    n, d, y = (np.asarray(v, dtype=float) for v in (n, d, y))
    n_scale, d_scale, top = _geomean(n), _geomean(d), float(y.min()) * (1 - 1e-9)
    un, ud = n / n_scale, d / d_scale

    def residuals(p: np.ndarray) -> np.ndarray:
        e, log_a, alpha, log_b, beta = p
        return np.log(e + np.exp(log_a) * un**-alpha + np.exp(log_b) * ud**-beta) - np.log(y)

    half = np.log(max(y.mean() / 2, 1e-12))
    starts = [
        [share * top, half, alpha, half, beta]
        for share in FLOOR_STARTS
        for alpha in ALPHA_STARTS[::2]
        for beta in ALPHA_STARTS[::2]
    ]
    if near is not None:
        a, b = near.A / n_scale**near.alpha, near.B / d_scale**near.beta
        starts = [[min(near.E, 0.99 * top), np.log(a), near.alpha, np.log(b), near.beta]]
    lower, upper = [0.0, -50.0, 0.0, -50.0, 0.0], [top, 50.0, MAX_EXPONENT, 50.0, MAX_EXPONENT]
    e, log_a, alpha, log_b, beta = _best(residuals, starts, lower, upper)
    return JointLaw(
        float(e),
        float(np.exp(log_a) * n_scale**alpha),
        float(alpha),
        float(np.exp(log_b) * d_scale**beta),
        float(beta),
    )


def frontier(compute: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the compute-efficient points: each lower than every cheaper one (of equal
    costs, the lowest)."""
    order = np.lexsort((y, compute))
    keep, best = [], np.inf
    for index in order:
        if y[index] < best:
            keep.append(int(index))
            best = y[index]
    return np.array(keep, dtype=int)


@dataclass(frozen=True)
class HeldOut:
    """The largest points predicted by a fit made without them."""

    x: list[float]
    actual: list[float]
    predicted: list[float]
    relative_error: float  # the largest over the held-out points
    passed: bool


def held_out(
    size: np.ndarray,
    predict_without: Callable[[np.ndarray], np.ndarray],
    y: np.ndarray,
    tolerance: float,
    count: int = 1,
) -> HeldOut:
    """`predict_without(train_mask)` fits on the masked points and predicts all of them; the
    `count` largest by `size` are held out and judged against `tolerance`."""
    held = np.argsort(size, kind="stable")[-count:]
    train = np.ones(size.size, dtype=bool)
    train[held] = False
    predicted = predict_without(train)[held]
    error = float(np.max(np.abs(predicted - y[held]) / np.abs(y[held])))
    return HeldOut(
        size[held].tolist(), y[held].tolist(), predicted.tolist(), error, error <= tolerance
    )


def at_bounds(law: PowerLaw | JointLaw, y: np.ndarray) -> bool:
    """A fit pressed against its bounds: an exponent at the largest allowed, or the floor E at
    the lowest point. The points then do not fall as a power law (they flatten or rise), and
    the "law" is a step, whatever its held-out error."""
    exponents = [law.alpha] + ([law.beta] if isinstance(law, JointLaw) else [])
    floor = (1 - 1e-6) * float(np.min(y))
    return max(exponents) >= 0.999 * MAX_EXPONENT or floor <= law.E


def axis_fit(x: np.ndarray, y: np.ndarray, tolerance: float) -> dict:
    """A power law along one axis, and its held-out check where 3 points remain to fit
    without the largest; or why there is none."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    distinct = np.unique(x).size
    if distinct < 3:
        return {"status": f"too few points: {distinct} distinct x, 3 needed"}
    law = fit_power_law(x, y)
    fit = {"status": "fitted", "law": asdict(law), "points": x.size, "at_bounds": at_bounds(law, y)}
    if distinct < 4:
        return fit | {"held_out": None, "check": "none: 4 distinct x needed"}
    check = held_out(x, lambda m: fit_power_law(x[m], y[m])(x), y, tolerance)
    return fit | {"held_out": asdict(check)}


def joint_fit(
    n: np.ndarray,
    d: np.ndarray,
    y: np.ndarray,
    tolerance: float,
    bootstrap: int = 200,
    seed: int = 0,
) -> dict:
    """The joint law, 95% bootstrap intervals on its exponents, and its held-out check (the
    points of largest N * D)."""
    n, d, y = (np.asarray(v, dtype=float) for v in (n, d, y))
    if np.unique(n).size < 2 or np.unique(d).size < 2 or y.size < 7:
        return {"status": f"too few points: {y.size} with 2+ N and 2+ D, 7 needed"}
    law = fit_joint(n, d, y)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        rows = rng.integers(0, y.size, y.size)
        if np.unique(n[rows]).size > 1 and np.unique(d[rows]).size > 1:
            again = fit_joint(n[rows], d[rows], y[rows], law)
            draws.append((again.alpha, again.beta))
    lo, hi = np.percentile(np.array(draws), [2.5, 97.5], axis=0)
    check = held_out(n * d, lambda m: fit_joint(n[m], d[m], y[m])(n, d), y, tolerance)
    return {
        "status": "fitted",
        "law": asdict(law),
        "points": y.size,
        "at_bounds": at_bounds(law, y),
        "alpha_interval": [float(lo[0]), float(hi[0])],
        "beta_interval": [float(lo[1]), float(hi[1])],
        "bootstrap": len(draws),
        "held_out": asdict(check),
    }
