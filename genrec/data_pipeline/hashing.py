"""Counter-based random numbers: a pure function of their keys, so that any worker, order or
restart draws the same number for the same thing, and nothing needs storing."""

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mixed(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: uint64 -> uint64 with every input bit reaching every output."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def unit_floats(x: np.ndarray) -> np.ndarray:
    """The top 53 bits of uint64 hashes as floats in [0, 1)."""
    return (x >> np.uint64(11)) / float(1 << 53)


def hashed_uniform(*keys: np.ndarray | int) -> np.ndarray:
    """Uniforms in [0, 1), one per broadcast position of the non-negative integer keys."""
    with np.errstate(over="ignore"):
        x = np.uint64(0)
        for key in keys:
            x = mixed(x * GOLDEN + np.asarray(key).astype(np.uint64) + np.uint64(1))
    return unit_floats(np.asarray(x))
