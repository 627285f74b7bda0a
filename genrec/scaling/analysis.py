"""The fits of a sweep's trials: along N at each data setting, along D at each model, the
compute frontier and the joint L(N, D), for the validation loss and for 1 - NDCG@10.

N is the non-embedding parameter count, D the training tokens seen, C the training FLOPs by
the model's own count. Rows are the finished trials of `results.json`.
"""

from collections import defaultdict
from typing import Any

import numpy as np

from genrec.scaling.laws import axis_fit, frontier, joint_fit

# What each fitted quantity is read from: it must fall as N, D and C grow.
TARGETS = {
    "valid_loss": lambda row: row["best_valid_loss"],
    "1-ndcg@10": lambda row: 1.0 - row["best_ndcg@10"],
}


def _groups(rows: list[dict], axes: list[str]) -> dict[str, list[dict]]:
    """Rows sharing their values of `axes`, keyed by those values."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        key = ", ".join(f"{axis}={row['axes'].get(axis)}" for axis in axes) or "all"
        groups[key].append(row)
    return dict(groups)


def _along(rows: list[dict], fixed: list[str], x: str, target, tolerance: float) -> list[dict]:
    fits = []
    for key, group in _groups(rows, fixed).items():
        xs = np.array([row[x] for row in group], dtype=float)
        ys = np.array([target(row) for row in group], dtype=float)
        points = {"fixed": key, "x": xs.tolist(), "y": ys.tolist()}
        fits.append(points | axis_fit(xs, ys, tolerance))
    return fits


def frontier_fit(compute: np.ndarray, y: np.ndarray, tolerance: float) -> dict[str, Any]:
    """L(C) through the compute-efficient trials, checked on the most expensive of them."""
    keep = frontier(compute, y)
    result = {"trials": keep.tolist(), "x": compute[keep].tolist(), "y": y[keep].tolist()}
    return result | axis_fit(compute[keep], y[keep], tolerance)


def analyse(rows: list[dict], axes: list[str], model_axes: list[str], tolerance: float) -> dict:
    """Every fit for every target; each says whether it passed its held-out check."""
    rows = [row for row in rows if row.get("status") == "finished"]
    data_axes = [axis for axis in axes if axis not in model_axes]
    out: dict[str, Any] = {"tolerance": tolerance, "trials": len(rows)}
    for name, target in TARGETS.items():
        if not rows:
            out[name] = {"status": "no finished trial"}
            continue
        y = np.array([target(row) for row in rows], dtype=float)
        n = np.array([row["non_embedding_parameters"] for row in rows], dtype=float)
        d = np.array([row["tokens"] for row in rows], dtype=float)
        c = np.array([row["flops"] for row in rows], dtype=float)
        out[name] = {
            "along_N": _along(rows, data_axes, "non_embedding_parameters", target, tolerance)
            if model_axes
            else [],
            "along_D": _along(rows, model_axes, "tokens", target, tolerance) if data_axes else [],
            "frontier": frontier_fit(c, y, tolerance),
            "joint": joint_fit(n, d, y, tolerance),
        }
    return out


def failed_checks(fits: dict) -> list[str]:
    """Each fit that is no power law, or whose held-out prediction missed by more than the
    tolerance, by name."""
    failed = []
    for name in TARGETS:
        section = fits[name]
        if "joint" not in section:
            continue
        named = [(f"{name} along N at {f['fixed']}", f) for f in section.get("along_N", [])]
        named += [(f"{name} along D at {f['fixed']}", f) for f in section.get("along_D", [])]
        named += [(f"{name} {kind}", section[kind]) for kind in ("frontier", "joint")]
        for label, fit in named:
            check = fit.get("held_out")
            if fit.get("at_bounds"):
                failed.append(f"{label}: no power law (the fit sits at its bounds)")
            elif check and not check["passed"]:
                failed.append(f"{label}: held-out error {check['relative_error']:.1%}")
    return failed
