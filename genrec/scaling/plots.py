"""A sweep's pictures, beside its results: validation loss against compute with the frontier
and its fit, against N for each data setting, and against D for each model."""

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from genrec.provenance import atomic_file
from genrec.scaling.laws import PowerLaw

PLOTS = {
    "compute": "loss_vs_compute.png",
    "params": "loss_vs_params.png",
    "data": "loss_vs_data.png",
}


def _curve(ax: Axes, fit: dict, label: str, color: str | None = None) -> None:
    """The fitted power law over its points' range, with its held-out verdict."""
    if fit.get("status") != "fitted":
        return
    law = PowerLaw(**fit["law"])
    x = np.geomspace(min(fit["x"]), max(fit["x"]), 100)
    check, text = fit["held_out"], f"{label}: α={law.alpha:.3f}"
    if fit["at_bounds"]:
        text += " (at its bounds: no power law)"
    elif check is not None:
        verdict = "passes" if check["passed"] else "FAILS"
        text += f", held-out {check['relative_error']:.1%} ({verdict})"
    ax.plot(x, law(x), "--", color=color, label=text)


def _plain_ticks(ax: Axes) -> None:
    """Losses as decimals, not powers of ten, on the log axis."""
    for ticks in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        ticks(FormatStrFormatter("%.3g"))


def _save(fig: Figure, out: Path) -> None:
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _compute(rows: list[dict], fits: dict, out: Path) -> None:
    fig = Figure(figsize=(8, 6))
    ax = fig.add_subplot()
    c = [row["flops"] for row in rows]
    loss = [row["best_valid_loss"] for row in rows]
    ax.scatter(c, loss, color="tab:gray", label="trials")
    front = fits["frontier"]
    ax.plot(front["x"], front["y"], "o-", color="tab:red", label="compute frontier")
    _curve(ax, front, "L(C) fit", "tab:red")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs (model count)")
    ax.set(ylabel="best validation loss", title="loss against compute")
    _plain_ticks(ax)
    ax.legend(fontsize=8)
    _save(fig, out)


def _along(fits: list[dict], xlabel: str, title: str, out: Path) -> None:
    fig = Figure(figsize=(8, 6))
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    for index, fit in enumerate(fits):
        color = colors[index % len(colors)]
        order = np.argsort(fit["x"])
        x, y = np.array(fit["x"])[order], np.array(fit["y"])[order]
        ax.plot(x, y, "o-", color=color, label=fit["fixed"])
        _curve(ax, fit, "fit", color)
    if not fits:
        ax.text(0.5, 0.5, "the sweep has no such axis", ha="center", transform=ax.transAxes)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="best validation loss", title=title)
    _plain_ticks(ax)
    ax.legend(fontsize=7)
    _save(fig, out)


def write_plots(rows: list[dict], fits: dict, folder: Path) -> list[Path]:
    """The three PNGs of the validation-loss fits (`analysis.analyse`); their paths."""
    rows = [row for row in rows if row.get("status") == "finished"]
    loss = fits["valid_loss"]
    paths = {key: Path(folder) / name for key, name in PLOTS.items()}
    if not rows:
        return []
    _compute(rows, loss, paths["compute"])
    _along(
        loss["along_N"], "non-embedding parameters N", "loss against N, per data", paths["params"]
    )
    _along(loss["along_D"], "training tokens D", "loss against D, per model", paths["data"])
    return list(paths.values())
