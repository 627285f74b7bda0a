"""One table of finished `genrec run` folders: test quality, the budget and its cost.

Command:
    python benchmarks/run_table.py RUN_DIR [RUN_DIR ...]

For each folder: the method, the recommender's epochs (pre-training or alternation +
fine-tuning), test Recall/NDCG@5/10, the selected validation NDCG@10, and training seconds per
epoch (`train_seconds / epochs` of each training stage); then popularity and SASRec from the
first folder (every folder of one dataset shares them). Reads metrics.json and train.json only.
"""

import json
import sys
from pathlib import Path

COLUMNS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def stage_cost(folder: Path) -> tuple[float, float] | None:
    """(epochs, training seconds) of one training stage's train.json, if it ran."""
    path = folder / "train.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary["epochs"], summary["samples"] / summary["train_samples_per_s"]


def row(run: Path) -> list[str]:
    metrics = json.loads((run / "metrics.json").read_text())
    costs = [c for c in (stage_cost(run / "train"), stage_cost(run / "finetune")) if c]
    if Path(metrics["checkpoint"]).parent.name != "finetune":
        costs = costs[:1]
    epochs = " + ".join(f"{e:.0f}" for e, _ in costs)
    per_epoch = " / ".join(f"{s / max(e, 1e-9):.0f}" for e, s in costs)
    quality = [f"{metrics['test'][c]:.4f}" for c in COLUMNS]
    valid = f"{metrics['valid']['ndcg@10']:.4f}"
    return [run.name, metrics["method"], epochs, *quality, valid, per_epoch]


def main(runs: list[Path]) -> None:
    header = ["run", "method", "epochs", *COLUMNS, "valid ndcg@10", "train s/epoch"]
    lines = [header, ["---"] * len(header)]
    lines += [row(run) for run in runs]
    baselines = json.loads((runs[0] / "metrics.json").read_text())["baselines"]
    for name, result in baselines.items():
        quality = [f"{result['test'][c]:.4f}" for c in COLUMNS]
        lines.append([name, "baseline", "", *quality, f"{result['valid']['ndcg@10']:.4f}", ""])
    for line in lines:
        print("| " + " | ".join(line) + " |")
    print(f"\ncommand: python benchmarks/run_table.py {' '.join(map(str, runs))}")


if __name__ == "__main__":
    main([Path(arg) for arg in sys.argv[1:]])
