"""`run_dir/report.png`: one picture of a run, drawn from the files its stages wrote.

Training loss and validation metrics against steps (train/train.json, then finetune/train.json
where the method fine-tunes), code usage per level (tokenizer/report.json), and the test
results beside the baselines (metrics.json); for a run with MTGRec's curriculum, the group
weights and influence scores against stages; for ETEGRec, the share of IDs each re-coding
changed. A panel whose stage has not run yet says so.
"""

import json
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from genrec import artifacts
from genrec.provenance import atomic_file

TEST_KEYS = ("recall@10", "ndcg@10")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _missing(ax: Axes, title: str, what: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, f"{what} not run yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _joined(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Training stages (train, then fine-tuning) as one: steps run on across them, and the
    selected step is the last stage's."""
    joined: dict[str, Any] = {"train_loss": [], "validations": [], "starts": []}
    offset = 0
    for summary in stages:
        joined["starts"].append(offset)
        joined["train_loss"] += [[step + offset, loss] for step, loss in summary["train_loss"]]
        joined["validations"] += [v | {"step": v["step"] + offset} for v in summary["validations"]]
        joined["best_step"] = summary["best_step"] + offset
        offset += summary["steps"]
    return joined


def _mark_stages(ax: Axes, starts: list[int]) -> None:
    for start in starts[1:]:
        ax.axvline(start, color="black", linewidth=0.8, label="fine-tuning starts")


def _training(ax: Axes, run: dict[str, Any] | None) -> None:
    if run is None:
        return _missing(ax, "loss", "genrec train")
    if run["train_loss"]:
        steps, losses = zip(*run["train_loss"], strict=True)
        ax.plot(steps, losses, label="training loss (the model's own)")
    validations = run["validations"]
    ax.plot(
        [v["step"] for v in validations],
        [v["loss"] for v in validations],
        "o-",
        label="validation loss",
    )
    _mark_stages(ax, run["starts"])
    ax.set(title="loss", xlabel="optimizer step")
    ax.legend()


def _validation(ax: Axes, run: dict[str, Any] | None) -> None:
    if run is None:
        return _missing(ax, "validation", "genrec train")
    validations = run["validations"]
    steps = [v["step"] for v in validations]
    for key in TEST_KEYS:
        ax.plot(steps, [v[key] for v in validations], "o-", label=key)
    ax.axvline(run["best_step"], color="grey", linestyle=":", label="selected")
    _mark_stages(ax, run["starts"])
    ax.set(title="validation", xlabel="optimizer step", ylim=(0, None))
    ax.legend()


def _codes(ax: Axes, report: dict[str, Any] | None) -> None:
    if report is None:
        return _missing(ax, "code usage", "genrec tokenize")
    items = report["items"]
    levels = items["levels"]
    bars = ax.bar(range(len(levels)), [level["usage"] for level in levels])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(levels)), [f"level {i}" for i in range(len(levels))])
    ax.set(ylim=(0, 1.05), ylabel="share of codebook used")
    ax.set_title(
        f"code usage ({report['config']['tokenizer']['name']}); collisions "
        f"{items['collision_rate_before']:.3f} -> {items['collision_rate_after']:.3f}"
    )


def _results(ax: Axes, metrics: dict[str, Any] | None) -> None:
    if metrics is None:
        return _missing(ax, "test", "genrec evaluate")
    rows = {f"genrec {metrics['method']}": metrics["test"]}
    rows |= {name: baseline["test"] for name, baseline in metrics["baselines"].items()}
    width = 0.8 / len(TEST_KEYS)
    for i, key in enumerate(TEST_KEYS):
        xs = [x + i * width for x in range(len(rows))]
        bars = ax.bar(xs, [row[key] for row in rows.values()], width, label=key)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks([x + width / 2 for x in range(len(rows))], list(rows))
    top = max(row[key] for row in rows.values() for key in TEST_KEYS)
    ax.set(title=f"test (top {metrics['beam_size']})", ylim=(0, 1.25 * top or 1.0))
    ax.legend()


def _curriculum(weights_ax: Axes, scores_ax: Axes, curriculum: dict[str, Any]) -> None:
    """Each group's weight from the uniform start through every stage, and its scores."""
    stages = curriculum["stages"]
    groups = len(curriculum["weights"])
    xs = range(len(stages) + 1)
    for g in range(groups):
        weights = [1 / groups] + [stage["weights"][g] for stage in stages]
        weights_ax.plot(xs, weights, "o-", label=f"table {g}")
        scores_ax.plot(xs[1:], [stage["scores"][g] for stage in stages], "o-", label=f"table {g}")
    weights_ax.set(title="curriculum: group weights", xlabel="stage", ylim=(0, None), xticks=xs)
    scores_ax.set(title="curriculum: influence scores", xlabel="stage", xticks=xs[1:])
    weights_ax.legend(fontsize=7, ncol=2)


def _recoding(ax: Axes, changes: list[dict[str, Any]]) -> None:
    """ETEGRec: the share of items whose first code and whose ID each re-coding changed."""
    epochs = [change["epoch"] for change in changes]
    for key, label in (("id", "ID changed"), ("first_code", "first code changed")):
        ax.plot(epochs, [change[key] for change in changes], "o-", label=label)
    ax.set(title="re-coding after tokenizer epochs", xlabel="epoch", ylabel="share of items")
    ax.set_ylim(0, None)
    ax.legend()


def write_run_report(run_dir: str | Path) -> Path:
    """Draws the report from whatever the run has written so far; returns its path."""
    run_dir = Path(run_dir)
    stages = [
        _read(artifacts.stage_dir(run_dir, stage) / artifacts.TRAIN_SUMMARY)
        for stage in (artifacts.TRAIN, artifacts.FINETUNE)
    ]
    summary, tuned = stages
    if tuned is not None and (summary is None or tuned.get("method") != summary.get("method")):
        tuned = None  # another method's, left in a shared run folder
    run = _joined([s for s in (summary, tuned) if s is not None]) if summary else None
    tokenizer = artifacts.stage_dir(run_dir, artifacts.TOKENIZER) / artifacts.TOKENIZER_REPORT
    metrics = _read(run_dir / artifacts.METRICS)
    curriculum = (summary or {}).get("curriculum")
    recoded = (summary or {}).get("recoded")
    fig = Figure(figsize=(18 if curriculum or recoded else 12, 8))
    axes = fig.subplots(2, 3 if curriculum or recoded else 2)
    if curriculum:
        _curriculum(axes[0, 2], axes[1, 2], curriculum)
    elif recoded:
        _recoding(axes[0, 2], recoded)
        axes[1, 2].set_axis_off()
    _training(axes[0, 0], run)
    _validation(axes[0, 1], run)
    _codes(axes[1, 0], _read(tokenizer))
    _results(axes[1, 1], metrics)
    code = (metrics or summary or {}).get("code") or {}
    commit = (code.get("git_commit") or "unknown")[:10] + (
        "+dirty" if code.get("git_dirty") else ""
    )
    fig.suptitle(f"{run_dir}  (genrec {code.get('genrec', '?')}, commit {commit})")
    fig.tight_layout()
    out = run_dir / artifacts.RUN_REPORT
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out
