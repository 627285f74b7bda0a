"""How well a tokenizer uses its codebooks: the numbers behind the codebook-collapse warning."""

import numpy as np

from genrec.tokenizers.collisions import collision_rate


def code_report(codes: np.ndarray, codebook_size: int) -> dict:
    """Per-level usage and perplexity of the codes [N, L], plus the full-id collision rate.

    `usage` is the share of the K codes used at least once; `perplexity` (exp of the entropy of
    the code frequencies) is the number of equally used codes with the same spread, so a level
    that uses many codes but leans on a few has a low one.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must have shape [N, L], got {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(
            f"codes must lie in [0, {codebook_size}), got {codes.min()}..{codes.max()}"
        )
    return {
        "num_items": len(codes),
        "codebook_size": codebook_size,
        "levels": [_level_report(column, codebook_size) for column in codes.T],
        "collision_rate": collision_rate(codes) if codes.shape[1] else 0.0,
    }


def usage_collapse_levels(report: dict, threshold: float) -> list[int]:
    """Levels whose share of used codes is below `threshold`: a sign of codebook collapse."""
    return [level for level, stats in enumerate(report["levels"]) if stats["usage"] < threshold]


def _level_report(column: np.ndarray, codebook_size: int) -> dict:
    counts = np.bincount(column, minlength=codebook_size)
    freq = counts[counts > 0] / max(len(column), 1)
    used = int((counts > 0).sum())
    return {
        "used": used,
        "usage": used / codebook_size,
        "perplexity": float(np.exp(-(freq * np.log(freq)).sum())),
    }
