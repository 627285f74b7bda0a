"""`genrec sweep SWEEP.yaml`: the trials of a sweep as Ray Tune trials, each a genrec training
run with its own Ray Train worker group (Ray Train V2 nests a trainer in a Tune trial), then
the accounting, the scaling-law fits and their plots.

The driver computes the stages the trials share (data, features, tokenizer: once per distinct
config) before any trial starts, and links them into each trial's folder, where the stages find
them by fingerprint. Each trial writes `trial.json` when it ends, finished or failed: a rerun
skips the finished ones, and the others resume from their latest training checkpoint.
"""

import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import ray
from omegaconf import DictConfig, OmegaConf

from genrec import artifacts
from genrec.cluster.runtime import ray_session, worker_bundle
from genrec.cluster.sweep_spec import Sweep, Trial
from genrec.config import config_from_dict
from genrec.errors import ConfigError, TrainingFailed, user_error
from genrec.provenance import atomic_file, code_version, fingerprint, to_plain, write_json
from genrec.scaling.analysis import analyse, failed_checks
from genrec.scaling.plots import write_plots
from genrec.trainer.model import ModelConfig, count_parameters, embedding_parameters

log = logging.getLogger(__name__)
SWEEP_RECORD = "sweep.json"
TRIAL_RECORD = "trial.json"
RESULTS_CSV, RESULTS_JSON, FITS = "results.csv", "results.json", "fits.json"
# A trial's own process only waits on its Ray Train run, whose workers hold the CPUs (Tune
# refuses a trial that requests nothing).
TRIAL_DRIVER_CPU = 0.01
# Sections of the config that the shared stages do not read.
TRAINING_SECTIONS = ("run_dir", "trainer", "finetune", "evaluate", "cluster")
SHARED_STAGES = (artifacts.DATA, "features", artifacts.TOKENIZER, artifacts.KEPT_TABLES)
COLUMNS = (
    "name",
    "status",
    "parameters",
    "non_embedding_parameters",
    "examples",
    "tokens",
    "flops",
    "flops_6nd",
    "wall_seconds",
    "samples_per_s",
    "final_valid_loss",
    "best_valid_loss",
    "final_ndcg@10",
    "best_ndcg@10",
    "final_recall@10",
    "best_recall@10",
    "error",
)


def claim_folder(sweep: Sweep) -> None:
    """Records which sweep file made the folder; a folder made by another is an error."""
    record = sweep.sweep_dir / SWEEP_RECORD
    if record.exists():
        made = json.loads(record.read_text())
        if made["digest"] != sweep.digest:
            raise ConfigError(
                f"{sweep.sweep_dir} was made by the sweep file {made['file']} (digest "
                f"{made['digest']}), not by {sweep.path} as it is now (digest {sweep.digest}); "
                "give another run_dir=, or remove the folder"
            )
        return
    trials = [{"name": t.name, "axes": t.axes} for t in sweep.trials]
    write_json(record, {"file": str(sweep.path), "digest": sweep.digest, "trials": trials})


def _shared_key(cfg: DictConfig) -> str:
    plain = to_plain(cfg)
    return fingerprint({k: v for k, v in plain.items() if k not in TRAINING_SECTIONS})


def share_stages(sweep: Sweep) -> None:
    """Data, features and semantic IDs once per distinct config, linked into each trial."""
    from genrec import stages

    done: set[str] = set()
    for trial in sweep.trials:
        key = _shared_key(trial.cfg)
        shared = sweep.sweep_dir / "shared" / key
        if key not in done:
            cfg = OmegaConf.merge(trial.cfg, {"run_dir": str(shared)})
            stages.id_tables(cfg)
            done.add(key)
        folder = Path(trial.cfg.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name in SHARED_STAGES:
            link, target = folder / name, (shared / name).absolute()
            if target.exists() and not link.exists():
                link.symlink_to(target, target_is_directory=True)


def finished(trial: Trial) -> bool:
    path = Path(trial.cfg.run_dir) / TRIAL_RECORD
    if not path.exists():
        return False
    record = json.loads(path.read_text())
    return record.get("status") == "finished" and record.get("config_digest") == trial.digest


def _last(validations: list[dict], key: str) -> float:
    return float(validations[-1][key]) if validations else math.nan


def account(summary: dict[str, Any], wall_seconds: float) -> dict[str, Any]:
    """A trial's row from its train.json: sizes, speed, and the data and compute spent up to
    the validation with the lowest loss (the loss the fits read), not to the run's end."""
    config = ModelConfig(**summary["model"])
    total = count_parameters(config)
    non_embedding = total - embedding_parameters(config)
    validations = summary["validations"]
    best = min(validations, key=lambda v: v["loss"], default=None)
    seen = best if best is not None else summary
    return {
        "parameters": total,
        "non_embedding_parameters": non_embedding,
        "examples": seen["samples"],
        "tokens": seen["tokens"],
        "flops": seen["flops"],
        "flops_6nd": 6 * non_embedding * seen["tokens"],
        "wall_seconds": round(wall_seconds, 1),
        "samples_per_s": summary["train_samples_per_s"],
        "final_valid_loss": _last(validations, "loss"),
        "best_valid_loss": math.nan if best is None else best["loss"],
        "final_ndcg@10": _last(validations, "ndcg@10"),
        "best_ndcg@10": summary["valid"]["ndcg@10"],
        "final_recall@10": _last(validations, "recall@10"),
        "best_recall@10": summary["valid"]["recall@10"],
    }


def run_trial(config: dict[str, Any]) -> dict[str, Any]:
    """One Tune trial: the genrec training run of one point of the sweep; its record is
    written whatever happens, and a failure re-raised for Tune to mark."""
    from genrec import stages

    cfg = config_from_dict(config["cfg"])
    record_path = Path(cfg.run_dir) / TRIAL_RECORD
    base = {"name": config["name"], "axes": config["axes"], "config_digest": config["digest"]}
    started = time.perf_counter()
    try:
        summary = json.loads((stages.train(cfg) / artifacts.TRAIN_SUMMARY).read_text())
    except Exception as err:
        cause = user_error(err) or err
        line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        write_json(record_path, base | {"status": "failed", "error": line})
        raise
    row = base | {"status": "finished"} | account(summary, time.perf_counter() - started)
    write_json(record_path, row | {"config": config["cfg"], **code_version()})
    return {key: row[key] for key in COLUMNS if isinstance(row.get(key), int | float)}


def concurrency(sweep: Sweep) -> int:
    """Trials at once: the sweep's setting, else as many as the cluster's CPUs hold (each
    trial's workers, one CPU for its data readers, and its own process's share)."""
    if sweep.max_concurrent_trials:
        return sweep.max_concurrent_trials
    cluster = sweep.trials[0].cfg.cluster
    need = worker_bundle(cluster)["CPU"] * cluster.num_workers + 1 + TRIAL_DRIVER_CPU
    return max(1, int(ray.cluster_resources().get("CPU", 1) // need))


def run_tune(sweep: Sweep, pending: list[Trial]) -> None:
    from ray import tune

    trials = {
        t.name: {
            "name": t.name,
            "axes": t.axes,
            "cfg": to_plain(t.cfg),
            "digest": t.digest,
        }
        for t in pending
    }

    def trainable(params: dict[str, Any]) -> dict[str, Any]:
        return run_trial(trials[params["trial"]])

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPU}),
        param_space={"trial": tune.grid_search(list(trials))},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency(sweep)),
        run_config=tune.RunConfig(
            name="tune", storage_path=str((sweep.sweep_dir / "tune").absolute()), verbose=1
        ),
    )
    tuner.fit()


def collect(sweep: Sweep) -> list[dict[str, Any]]:
    """Every trial's record, in sweep order; a trial that never wrote one is `not run`."""
    rows = []
    for trial in sweep.trials:
        path = Path(trial.cfg.run_dir) / TRIAL_RECORD
        record = json.loads(path.read_text()) if path.exists() else {"status": "not run"}
        rows.append({"name": trial.name, "axes": trial.axes} | record)
    return rows


def _cell(value: Any) -> Any:
    """An axis value in the CSV: a map or list as JSON."""
    return json.dumps(value) if isinstance(value, dict | list) else value


def write_results(sweep: Sweep, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """results.csv (one row a trial, its axes as columns), results.json, fits.json, PNGs."""
    folder = sweep.sweep_dir
    with atomic_file(folder / RESULTS_CSV) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS[:2], *sweep.axes, *COLUMNS[2:]])
        for row in rows:
            axes = [_cell(row["axes"].get(axis, "")) for axis in sweep.axes]
            writer.writerow(
                [row.get("name"), row.get("status"), *axes, *(row.get(c, "") for c in COLUMNS[2:])]
            )
    write_json(folder / RESULTS_JSON, {"sweep": str(sweep.path), "trials": rows})
    fits = analyse(rows, sweep.axes, sweep.model_axes, sweep.tolerance)
    write_json(folder / FITS, fits)
    write_plots(rows, fits, folder)
    return fits


def summarise(sweep: Sweep, rows: list[dict[str, Any]], fits: dict[str, Any]) -> str:
    done = [row for row in rows if row["status"] == "finished"]
    lines = [f"trials {len(done)} of {len(rows)} finished"]
    for row in done:
        lines.append(
            f"  {row['name']:<40} N {row['non_embedding_parameters']:>10,}  "
            f"D {row['tokens']:>12,}  "
            f"C {row['flops']:.3g}  valid loss {row['best_valid_loss']:.4f}  "
            f"ndcg@10 {row['best_ndcg@10']:.4f}"
        )
    joint = fits.get("valid_loss", {}).get("joint", {})
    if joint.get("status") == "fitted":
        law = joint["law"]
        lines.append(
            f"L(N, D) = {law['E']:.3f} + {law['A']:.3g}/N^{law['alpha']:.3f} + "
            f"{law['B']:.3g}/D^{law['beta']:.3f}; alpha 95% {joint['alpha_interval']}, "
            f"beta 95% {joint['beta_interval']}"
        )
    lines += [f"fit check failed: {line}" for line in failed_checks(fits)]
    lines.append(f"results: {sweep.sweep_dir / RESULTS_CSV}")
    return "\n".join(lines)


def run_sweep(sweep: Sweep) -> str:
    """Runs the sweep's unfinished trials; writes and summarises its results. Raises
    TrainingFailed, naming them, when trials failed (after writing everything)."""
    claim_folder(sweep)
    pending = [t for t in sweep.trials if not finished(t)]
    with ray_session(sweep.trials[0].cfg.cluster, extra_cpus=TRIAL_DRIVER_CPU):
        if pending:
            share_stages(sweep)
            run_tune(sweep, pending)
    rows = collect(sweep)
    text = summarise(sweep, rows, write_results(sweep, rows))
    failed = [row for row in rows if row["status"] != "finished"]
    if failed:
        print(text, flush=True)
        named = "; ".join(f"{row['name']}: {row.get('error', row['status'])}" for row in failed)
        raise TrainingFailed(f"{len(failed)} of {len(rows)} trials did not finish: {named}")
    return text
