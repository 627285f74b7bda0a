"""Methods trained to their validation plateau on one dataset, beside a tuned SASRec.

Command:
    python benchmarks/converged.py DATASET [--methods tiger letter ...] [--seeds 0 1]
        [--tag NAME] [--root runs/converged] [--cap 200] [--patience 5] [--validate-every 2]
        [key=value ...]

1. SASRec is tuned first: every point of `SASREC_GRID` (learning rate, dropout, width, history
   length) trains with its own early stopping (`sasrec.patience` validations, one every
   `sasrec.eval_every` epochs) on one shared data stage; the point with the best validation
   NDCG@10 is the table's SASRec. (Each point's trainer reads the test split too; only the
   winner's figures are reported.)
2. Each method and seed runs `genrec evaluate` under `STUDY`: validation on a fixed sample of
   2,000 users every `--validate-every` epochs (2; on Scientific a validation costs about as
   much as an epoch), the run stopping after `--patience` validations without a better
   NDCG@10 (any gain counts, where `genrec run` wants 2%: the study trains to the very
   plateau; at most `--cap` epochs; a run that reaches the cap is marked), a constant learning
   rate after warm-up (so the cap does not shape the schedule; MTGRec and ETEGRec default to
   a decaying one), each method's default encoder (causal; TokenRec's history-coded user
   tokens need the bidirectional one), then the test read once
   with the selected model. The key=value overrides apply to every method run; `--tag`
   names a variant (e.g. `--tag small trainer.model.preset=small`). A method with a
   curriculum (MTGRec) has its stages in the official proportions scaled to the epochs TIGER
   of the same seed took to its best validation, so TIGER runs first.
3. Writes ROOT/DATASET/converged.json and .csv (every finished run in the folder, the tuned
   SASRec and popularity) and curves.png (validation NDCG@10 against examples seen and
   against wall time), and prints the table.

It resumes: the SASRec points and method runs that finished are read back, a method run that
was cut off continues from its latest Ray Train checkpoint (the stages it shares with other
runs are reused by fingerprint), so a study can span several sessions.
"""

import argparse
import csv
import itertools
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from genrec import artifacts, stages
from genrec.cf.sasrec import train_sasrec
from genrec.config import load_config
from genrec.data_pipeline.subsample import train_examples
from genrec.provenance import atomic_file, code_version, write_json

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "datasets"
COLUMNS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
SELECT = "ndcg@10"
SASREC_GRID = {
    "lr": [1e-3, 2e-3],
    "dropout": [0.3, 0.5],
    "hidden": [64, 128],
    "max_len": [20, 50],
}
STUDY = ["evaluate.valid_users=2000", "trainer.min_lr_ratio=1.0", "trainer.min_gain=0.0"]
RUN_RECORD = "converged_run.json"
# MTGRec's pretrain.sh: a warm-up of 30% of the 200 epochs, then 6 stages of 10% each.
CURRICULUM_SHAPE = (0.3, 0.1)
CURRICULUM_STAGES = 6


def preset(dataset: str) -> list[Path]:
    """The dataset's YAML; `synthetic` is the built-in default data (no file)."""
    return [] if dataset == "synthetic" else [PRESETS / f"{dataset}.yaml"]


def point_name(point: dict[str, Any]) -> str:
    return "-".join(f"{key}{value:g}" for key, value in point.items())


def tune_sasrec(dataset: str, root: Path, seed: int) -> dict[str, Any]:
    """Every grid point's validation (trained or read back), and the winner."""
    folder = root / dataset / "sasrec"
    points = []
    for values in itertools.product(*SASREC_GRID.values()):
        point = dict(zip(SASREC_GRID, values, strict=True))
        keys = [f"sasrec.{key}={value}" for key, value in point.items()]
        cfg = load_config(preset(dataset), [f"run_dir={folder}", f"seed={seed}", *keys])
        out = train_sasrec(cfg, stages.data(cfg), folder / point_name(point))
        metrics = json.loads((out / artifacts.CF_METRICS).read_text())
        points.append({"point": point, "folder": str(out), **metrics})
        print(f"sasrec {point_name(point)}: valid {SELECT} {metrics['valid'][SELECT]:.4f}")
    best = max(points, key=lambda p: p["valid"][SELECT])
    return {"grid": SASREC_GRID, "points": points, "best": best}


def share_stages(root: Path, dataset: str, run_dir: Path, cfg: Any) -> None:
    """Copies what other runs of the dataset already computed: the data, the text features,
    LightGCN, the SASRec grid's point with the run's `sasrec` settings (its baseline and
    LETTER's input), and the tokenizer of a run of the same method and seed (a variant's).
    A stage is only reused where its fingerprint matches the run's config."""
    grid = root / dataset / "sasrec"
    point = grid / point_name({key: cfg.sasrec[key] for key in SASREC_GRID})
    shared = {artifacts.DATA: grid / artifacts.DATA, artifacts.SASREC: point}
    for other in sorted((root / dataset / "runs").glob("*")):
        same = other.name.startswith(f"{cfg.method}-") and other.name.endswith(f"-s{cfg.seed}")
        stages_of = (artifacts.TEXT_FEATURES, artifacts.LIGHTGCN)
        for stage in (*stages_of, artifacts.TOKENIZER) if same else stages_of:
            if (other / stage).is_dir():
                shared.setdefault(stage, other / stage)
    for stage, source in shared.items():
        if source.is_dir() and not (run_dir / stage).exists():
            shutil.copytree(source, run_dir / stage)


def method_overrides(method: str, seed: int, args: argparse.Namespace, run_dir: Path) -> list:
    return [
        f"run_dir={run_dir}",
        f"method={method}",
        f"seed={seed}",
        f"trainer.epochs={args.cap}",
        f"trainer.patience={args.patience}",
        *STUDY,
        *args.overrides,
    ]


def run_method(dataset: str, method: str, seed: int, args: argparse.Namespace) -> dict:
    """One method run to its plateau and its test, or its record if it finished before."""
    name = "-".join([method, *([args.tag] if args.tag else []), f"s{seed}"])
    run_dir = args.root / dataset / "runs" / name
    overrides = method_overrides(method, seed, args, run_dir)
    record = run_dir / RUN_RECORD
    if record.exists():
        done = json.loads(record.read_text())
        if done["overrides"] != overrides:
            raise SystemExit(f"{run_dir} was run with {done['overrides']}; use another --tag")
        return done
    files = preset(dataset)
    cfg = load_config(files, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    share_stages(args.root, dataset, run_dir, cfg)
    per_epoch = train_examples(stages.data(cfg), cfg.trainer.data_fraction, cfg.seed)
    steps = max(1, math.ceil(per_epoch * args.validate_every / cfg.trainer.batch_size))
    schedule = [f"trainer.eval_every={steps}"]
    if cfg.finetune.epochs:  # the method fine-tunes: that stage runs to its plateau too
        schedule.append(f"finetune.epochs={args.cap}")
    if cfg.trainer.curriculum.stage_epochs:
        tiger = tiger_best_epoch(args.root / dataset, seed, per_epoch, cfg.trainer.batch_size)
        stages_at = curriculum_stages(tiger)
        schedule.append(f"trainer.curriculum.stage_epochs=[{','.join(map(str, stages_at))}]")
    cfg = load_config(files, [*overrides, *schedule])
    started = time.perf_counter()
    metrics = json.loads(stages.evaluate(cfg).read_text())
    done = {
        "name": name,
        "method": method,
        "seed": seed,
        "overrides": overrides,
        "schedule": schedule,
        "session_seconds": round(time.perf_counter() - started, 1),
        "test": metrics["test"],
        "valid": metrics["valid"],
        "popularity": metrics["baselines"]["popularity"],
        "training": training_record(run_dir, args.cap),
        "code": code_version(),
    }
    write_json(record, done)
    return done


def tiger_best_epoch(folder: Path, seed: int, per_epoch: int, batch_size: int) -> float:
    """The epoch at which TIGER (same data, same seed) validated best."""
    record = folder / "runs" / f"tiger-s{seed}" / RUN_RECORD
    if not record.exists():
        raise SystemExit(
            f"a curriculum is scaled to TIGER's plateau: run --methods tiger --seeds {seed} "
            f"first ({record} is missing)"
        )
    best = json.loads(record.read_text())["training"]["best"]
    return best["step"] * batch_size / per_epoch


def curriculum_stages(plateau: float) -> list[int]:
    """MTGRec's curriculum in its official proportions (a 60-epoch warm-up, then six 20-epoch
    stages, of 200 epochs) over the epochs TIGER took to its plateau: the stages then fall
    while the model still learns, not after early stopping has ended the run."""
    warmup, stage = (max(1, round(share * plateau)) for share in CURRICULUM_SHAPE)
    return [warmup] + [stage] * CURRICULUM_STAGES


def training_record(run_dir: Path, cap: int) -> dict[str, Any]:
    """The training stages (pre-training, then fine-tuning where the method has it) as one
    curve, with its costs: examples and seconds run on across the stages."""
    curve, samples, seconds, epochs, hit_cap = [], 0, 0.0, 0.0, False
    for stage in ("train", "finetune"):
        path = run_dir / stage / artifacts.TRAIN_SUMMARY
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        validating = 0.0
        for v in summary["validations"]:
            validating += v["valid_seconds"]
            wall = seconds + v["train_seconds"] + validating
            curve.append({"samples": samples + v["samples"], "seconds": wall, SELECT: v[SELECT]})
        samples += summary["samples"]
        seconds += summary["train_seconds"] + validating
        epochs += summary["epochs"]
        hit_cap = hit_cap or summary["epochs"] >= cap - 1e-3
        best = {"stage": stage, "step": summary["best_step"]}
        validations = len(summary["validations"])
        per_validation = validating / max(validations, 1)
        per_epoch = summary["train_seconds"] / max(summary["epochs"], 1e-9)
    return {
        "curve": curve,
        "samples": samples,
        "seconds": round(seconds, 1),
        "epochs": epochs,
        "best": best,
        "hit_cap": hit_cap,
        "seconds_per_epoch": round(per_epoch, 1),
        "seconds_per_validation": round(per_validation, 1),
    }


def table_rows(runs: list[dict], sasrec: dict) -> list[dict[str, Any]]:
    """One row per method (mean over its seeds, with the seeds' spread), then SASRec and
    popularity; gains are relative to TIGER's mean R@10."""
    by_method: dict[str, list[dict]] = {}
    for run in runs:
        by_method.setdefault(run["name"].rsplit("-s", 1)[0], []).append(run)
    tiger = [r["test"]["recall@10"] for r in by_method.get("tiger", [])]
    reference = sum(tiger) / len(tiger) if tiger else None
    rows = []
    for name, group in by_method.items():
        recall = [r["test"]["recall@10"] for r in group]
        mean = {c: sum(r["test"][c] for r in group) / len(group) for c in COLUMNS}
        train = [r["training"] for r in group]
        rows.append(
            {
                "model": f"genrec {name}",
                "seeds": len(group),
                **mean,
                "recall@10 spread": max(recall) - min(recall),
                "gain over tiger": mean["recall@10"] / reference - 1 if reference else None,
                "valid ndcg@10": sum(r["valid"][SELECT] for r in group) / len(group),
                "best": ", ".join(f"{t['best']['stage']} step {t['best']['step']}" for t in train),
                "epochs": ", ".join(f"{t['epochs']:g}" for t in train),
                "hit cap": any(t["hit_cap"] for t in train),
                "examples": sum(t["samples"] for t in train) // len(train),
                "train+valid s": round(sum(t["seconds"] for t in train) / len(train)),
                "s/epoch": train[0]["seconds_per_epoch"],
                "s/validation": train[0]["seconds_per_validation"],
            }
        )
    best = sasrec["best"]
    rows.append({"model": f"SASRec tuned ({point_name(best['point'])})", **quality(best)})
    if runs:
        rows.append({"model": "popularity", **quality(runs[0]["popularity"])})
    return rows


def quality(result: dict[str, dict[str, float]]) -> dict[str, float]:
    """A baseline's test figures in the table's columns, and its validation NDCG@10."""
    return {**{c: result["test"][c] for c in COLUMNS}, "valid ndcg@10": result["valid"][SELECT]}


def markdown(rows: list[dict[str, Any]]) -> str:
    header = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row.get(key)) for key in header) + " |")
    return "\n".join(lines)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key.startswith("gain"):
        return f"{value:+.1%}"
    if isinstance(value, float):
        return f"{value:.1f}" if key.startswith("s/") else f"{value:.4f}"
    return str(value)


def plot(runs: list[dict], sasrec: dict, path: Path) -> None:
    figure, (by_samples, by_seconds) = plt.subplots(1, 2, figsize=(13, 5))
    for ax in (by_samples, by_seconds):
        best = sasrec["best"]["valid"][SELECT]
        ax.axhline(best, color="grey", linestyle="--", label="SASRec tuned (all validation users)")
    for run in runs:
        curve = run["training"]["curve"]
        values = [point[SELECT] for point in curve]
        by_samples.plot([p["samples"] for p in curve], values, "o-", ms=3, label=run["name"])
        by_seconds.plot([p["seconds"] for p in curve], values, "o-", ms=3, label=run["name"])
    by_samples.set(xlabel="training examples seen", ylabel=f"validation {SELECT}")
    by_seconds.set(xlabel="wall seconds (training + validation)", ylabel=f"validation {SELECT}")
    by_samples.legend(fontsize=8)
    figure.suptitle(path.parent.name)
    figure.tight_layout()
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def write_results(folder: Path, runs: list[dict], sasrec: dict, command: str) -> str:
    rows = table_rows(runs, sasrec)
    table = markdown(rows)
    write_json(
        folder / "converged.json",
        {"rows": rows, "runs": runs, "sasrec": sasrec, "command": command, "code": code_version()},
    )
    with atomic_file(folder / "converged.csv") as tmp, open(tmp, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    plot(runs, sasrec, folder / "curves.png")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "dataset", help="a preset of configs/datasets (e.g. amazon14_beauty), or synthetic"
    )
    parser.add_argument("--methods", nargs="+", default=["tiger"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--tag", default="", help="names a variant's runs (with its overrides)")
    parser.add_argument("--root", type=Path, default=Path("runs/converged"))
    parser.add_argument("--cap", type=int, default=200, help="most epochs of a method run")
    parser.add_argument("--patience", type=int, default=5, help="validations without progress")
    parser.add_argument("--validate-every", type=float, default=2, help="epochs between them")
    parser.add_argument("overrides", nargs="*", help="key=value for every method run")
    args = parser.parse_intermixed_args()
    args.root = args.root.resolve()
    sasrec = tune_sasrec(args.dataset, args.root, seed=0)
    for method, seed in itertools.product(args.methods, args.seeds):
        run_method(args.dataset, method, seed, args)
    folder = args.root / args.dataset
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob(f"runs/*/{RUN_RECORD}"))]
    command = "python " + " ".join(sys.argv)
    print(write_results(folder, runs, sasrec, command))
    print(f"\ncommand: {command}\nresults: {folder / 'converged.json'}, {folder / 'curves.png'}")


if __name__ == "__main__":
    main()
