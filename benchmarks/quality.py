"""Recommendation quality: genrec's TIGER and LETTER recipes beside SASRec and popularity.

Command:
    python benchmarks/quality.py [key=value ...] [--datasets amazon14_office ...]
        [--methods tiger letter] [--root runs/quality]

Each (dataset, method) runs `genrec evaluate` end to end (prepare, features, tokenizer,
train, beam search) in its own run folder under --root, reusing finished stages. The
key=value overrides (given before the options) apply to every run, e.g. a CPU budget:
trainer.epochs=8. Prints a Markdown table of test Recall/NDCG@5/10 with the wall time of
each run, and writes it with every figure to --root/quality.json. The published Beauty
figures are in ../shared/datasets/README.md.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from genrec import stages
from genrec.config import load_config
from genrec.provenance import code_version, write_json

HERE = Path(__file__).resolve().parent

PRESETS = HERE.parent / "configs" / "datasets"
COLUMNS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def share_inputs(source: Path, target: Path) -> None:
    """Copies the data and feature stages of another method's run: their fingerprints match,
    so the new run reuses them instead of recomputing (text embeddings take minutes on CPU)."""
    for stage in ("data", "features"):
        if (source / stage).is_dir() and not (target / stage).exists():
            shutil.copytree(source / stage, target / stage)


def run(dataset: str, method: str, root: Path, overrides: list[str]) -> tuple[dict, float]:
    for other in (root / dataset).glob("*"):
        share_inputs(other, root / dataset / method)
    cfg = load_config(
        [PRESETS / f"{dataset}.yaml"],
        [f"run_dir={root / dataset / method}", f"method={method}", *overrides],
    )
    started = time.perf_counter()
    metrics = json.loads(stages.evaluate(cfg).read_text())
    return metrics, time.perf_counter() - started


def row(name: str, metrics: dict[str, float], seconds: str = "") -> str:
    return f"| {name} | " + " | ".join(f"{metrics[k]:.4f}" for k in COLUMNS) + f" | {seconds} |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--datasets", nargs="+", default=["amazon14_office", "amazon18_industrial_scientific"]
    )
    parser.add_argument("--methods", nargs="+", default=["tiger", "letter"])
    parser.add_argument("--root", type=Path, default=Path("runs/quality"))
    parser.add_argument("overrides", nargs="*", help="key=value for every run")
    args = parser.parse_args()
    results, lines = {}, []
    header = "| model | " + " | ".join(COLUMNS) + " | wall s |"
    for dataset in args.datasets:
        lines += [f"\n{dataset} (test split)\n", header, "|---" * (len(COLUMNS) + 2) + "|"]
        for method in args.methods:
            metrics, seconds = run(dataset, method, args.root, args.overrides)
            results[f"{dataset}/{method}"] = {**metrics, "wall_seconds": round(seconds, 1)}
            lines.append(row(f"genrec {method}", metrics["test"], f"{seconds:.0f}"))
        for name, baseline in metrics["baselines"].items():
            lines.append(row(name, baseline["test"]))
    table = "\n".join(lines)
    print(table)
    print("\ncommand: python " + " ".join(sys.argv))
    write_json(
        args.root / "quality.json",
        {"table": table, "runs": results, "argv": sys.argv, "code": code_version()},
    )


if __name__ == "__main__":
    main()
