"""Scaling-law sweeps: the fits recover known laws and flag a bad extrapolation, the data
fraction's users, the accounting, the sweep file's checks, and a real sweep on Ray Tune with
nested Ray Train + DeepSpeed runs (a failed trial recorded, a rerun running no trial again)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.cluster.sweep import TrainingFailed, account, claim_folder, run_sweep
from genrec.cluster.sweep_spec import load_sweep
from genrec.data_pipeline.example_arrays import sequences_table
from genrec.data_pipeline.ray_ingest import PositionTracker, stream_batches
from genrec.data_pipeline.subsample import kept_users, train_examples
from genrec.errors import ConfigError
from genrec.scaling.analysis import analyse, failed_checks
from genrec.scaling.laws import JointLaw, PowerLaw, axis_fit, fit_joint, fit_power_law, frontier
from genrec.trainer.model import ModelConfig, batch_flops, flops_per_example
from tests.conftest import TINY


def test_a_power_law_and_the_joint_law_are_recovered_from_noisy_points():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e4, 1e7, 8)
    truth = PowerLaw(E=1.8, A=60.0, alpha=0.32)
    law = fit_power_law(x, truth(x) * np.exp(rng.normal(0, 0.002, x.size)))
    assert abs(law.alpha - truth.alpha) < 0.02 and abs(law.E - truth.E) < 0.05

    n, d = (v.ravel() for v in np.meshgrid(np.geomspace(1e5, 1e7, 4), np.geomspace(1e6, 1e8, 4)))
    joint = JointLaw(E=1.2, A=400.0, alpha=0.36, B=900.0, beta=0.28)
    fitted = fit_joint(n, d, joint(n, d) * np.exp(rng.normal(0, 0.002, n.size)))
    assert abs(fitted.alpha - joint.alpha) < 0.02 and abs(fitted.beta - joint.beta) < 0.02


def test_a_bad_extrapolation_is_flagged_and_a_good_one_passes():
    x = np.geomspace(1e4, 1e6, 6)
    y = PowerLaw(E=2.0, A=30.0, alpha=0.3)(x)
    good = axis_fit(x, y, tolerance=0.02)
    assert good["held_out"]["passed"] and good["held_out"]["relative_error"] < 1e-6
    overfit = y.copy()
    overfit[-1] *= 1.15  # the largest model got worse: the law breaks where it was not fitted
    bad = axis_fit(x, overfit, tolerance=0.02)
    assert not bad["held_out"]["passed"] and bad["held_out"]["relative_error"] > 0.1
    assert axis_fit(x[:2], y[:2], 0.02)["status"].startswith("too few points")
    assert not good["at_bounds"]
    rising = axis_fit(x, np.array([3.0, 2.5, 2.2, 2.3, 2.4, 2.6]), tolerance=0.5)
    assert rising["at_bounds"]  # it falls, then rises: no power law, whatever its check


def test_the_frontier_keeps_each_point_below_every_cheaper_one():
    compute = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    loss = np.array([5.0, 4.0, 4.5, 3.0, 3.5])
    assert frontier(compute, loss).tolist() == [0, 1, 3]


def _row(name: str, n: float, d: float, law: JointLaw, axes: dict) -> dict:
    loss = float(law(n, d))
    return {
        "name": name,
        "status": "finished",
        "axes": axes,
        "non_embedding_parameters": n,
        "tokens": d,
        "flops": 6 * n * d,
        "best_valid_loss": loss,
        "best_ndcg@10": 1 / (1 + loss),
    }


def test_the_analysis_fits_each_axis_and_names_failed_checks():
    law = JointLaw(E=1.0, A=50.0, alpha=0.3, B=80.0, beta=0.25)
    rows = [
        _row(f"{i}-{j}", n, d, law, {"trainer.model.d_model": i, "trainer.data_fraction": j})
        for i, n in enumerate(np.geomspace(1e4, 1e6, 4))
        for j, d in enumerate(np.geomspace(1e6, 1e8, 4))
    ]
    rows[-1]["best_valid_loss"] *= 1.3
    fits = analyse(
        rows, ["trainer.model.d_model", "trainer.data_fraction"], ["trainer.model.d_model"], 0.05
    )
    loss = fits["valid_loss"]
    assert len(loss["along_N"]) == 4 and len(loss["along_D"]) == 4
    assert loss["along_N"][0]["status"] == "fitted"
    assert abs(loss["along_N"][0]["law"]["alpha"] - 0.3) < 0.02
    assert loss["joint"]["status"] == "fitted" and loss["joint"]["alpha_interval"][0] <= 0.3
    failed = failed_checks(fits)
    assert any("along N at trainer.data_fraction=3" in line for line in failed)
    assert not any("along N at trainer.data_fraction=0" in line for line in failed)


def test_data_fraction_users_are_nested_seeded_and_counted(tmp_path):
    users = np.arange(20_000)
    half, most = kept_users(users, 0.5, 3), kept_users(users, 0.8, 3)
    assert abs(half.mean() - 0.5) < 0.02 and not (half & ~most).any()
    assert np.array_equal(half, kept_users(users[::-1], 0.5, 3)[::-1])
    assert (half != kept_users(users, 0.5, 4)).mean() > 0.3
    assert kept_users(users, 1.0, 3).all()

    lengths = np.array([5, 3, 9, 2, 7, 12, 4, 6])
    block = sequences_table([np.arange(n) for n in lengths], np.arange(8) * 1000)
    users = block.column("user").to_numpy()
    tracker = PositionTracker()
    batches = stream_batches(
        [block], tracker, 50, 4, 0, np.random.default_rng(0), seed=3, data_fraction=0.5
    )
    trained_users = set()
    for batch in batches:
        trained_users |= set(batch["user"].tolist())
        tracker.trained(batch["source"])
    kept = kept_users(users, 0.5, 3)
    assert 0 < kept.sum() < 8 and trained_users == set(users[kept].tolist())
    assert tracker.state()["rows"] == {0: list(range(8))}  # skipped users count as trained

    import pyarrow as pa
    import pyarrow.parquet as pq

    full = [np.arange(n + 2) for n in lengths]  # training sequence + valid + test items
    pq.write_table(pa.table({"user": users, "items": full}), tmp_path / "sequences.parquet")
    # Every user kept: the manifest's count (prepare's tests check it against the sequences).
    (tmp_path / "manifest.json").write_text(json.dumps({"num_train_examples": 12345}))
    assert train_examples(tmp_path, 0.5, 3) == int((lengths[kept] - 1).sum())
    assert train_examples(tmp_path, 1.0, 3) == 12345


def test_a_trial_is_accounted_at_its_best_validation_not_at_its_end():
    """The fits read the lowest validation loss, so D and C are those spent up to it."""
    config = ModelConfig.preset("tiny", num_levels=3, codebook_size=16, dedup_size=2)
    validations = [
        {"step": 10, "loss": 2.0, "samples": 100, "tokens": 400, "flops": 1e9},
        {"step": 20, "loss": 1.5, "samples": 200, "tokens": 800, "flops": 2e9},
        {"step": 30, "loss": 1.7, "samples": 300, "tokens": 1200, "flops": 3e9},
    ]
    summary = {
        "model": vars(config),
        "validations": validations,
        "samples": 300,
        "tokens": 1200,
        "flops": 3e9,
        "train_samples_per_s": 10.0,
        "valid": {"ndcg@10": 0.2, "recall@10": 0.3},
    }
    for v in validations:
        v |= {"ndcg@10": 0.2, "recall@10": 0.3}
    row = account(summary, 5.0)
    assert row["best_valid_loss"] == 1.5 and row["final_valid_loss"] == 1.7
    assert (row["examples"], row["tokens"], row["flops"]) == (200, 800, 2e9)


def test_batch_flops_add_up_the_examples_of_both_encoders():
    config = ModelConfig.preset("tiny", num_levels=3, codebook_size=8, dedup_size=4)
    history = torch.tensor([[-1, -1, 4, 5], [1, 2, 3, 4]])
    expected = flops_per_example(config, 2) + flops_per_example(config, 4)
    assert batch_flops(config, history, torch.tensor([7, 8])) == expected
    window_targets = torch.tensor([[-1, -1, 5, 6], [2, 3, -1, 5]])
    windows = flops_per_example(config, 2, True, 2) + flops_per_example(config, 4, True, 3)
    assert batch_flops(config, history, window_targets) == windows
    assert flops_per_example(config, 4, True, 3) < 3 * flops_per_example(config, 4)


def _sweep_file(folder: Path, text: str) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).parents[1].glob("configs/sweeps/*.yaml")), ids=lambda p: p.name
)
def test_every_sweep_file_loads(path):
    sweep = load_sweep(path, [])
    assert len(sweep.trials) >= 4 and sweep.model_axes == ["trainer.model"]
    assert sweep.sweep_dir == Path.cwd() / "sweeps" / path.stem  # absolute: trials chdir
    assert Path(sweep.trials[0].cfg.run_dir).is_absolute()


def test_bad_sweep_files_fail_before_any_trial(tmp_path):
    def error_of(text: str) -> str:
        with pytest.raises(ConfigError) as info:
            load_sweep(_sweep_file(tmp_path, text), [f"run_dir={tmp_path / 'sweep'}"])
        return str(info.value)

    assert "trainer.no_such_key" in error_of("grid: {trainer.no_such_key: [1, 2]}")
    assert "names no trial" in error_of("grid: {}")
    assert "non-empty list" in error_of("grid: {trainer.epochs: []}")
    fraction = error_of("grid: {trainer.data_fraction: [0.5, 1.5]}")
    assert "trainer.data_fraction" in fraction and "(0, 1]" in fraction and "01-" in fraction
    assert "unknown key(s) ['gird']" in error_of("gird: {trainer.epochs: [1]}")
    assert "cannot read sweep file" in error_of("overrides: [a=[1]")

    sweep = load_sweep(
        _sweep_file(tmp_path, "grid: {trainer.epochs: [1, 2]}"), [f"run_dir={tmp_path / 's'}"]
    )
    assert [t.name for t in sweep.trials] == ["00-epochs=1", "01-epochs=2"]
    assert sweep.trials[1].cfg.trainer.epochs == 2
    assert sweep.trials[1].cfg.run_dir == str(tmp_path / "s" / "trials" / "01-epochs=2")
    claim_folder(sweep)
    other = load_sweep(
        _sweep_file(tmp_path, "grid: {trainer.epochs: [1, 3]}"), [f"run_dir={tmp_path / 's'}"]
    )
    with pytest.raises(ConfigError, match="was made by the sweep file"):
        claim_folder(other)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_sweep_runs_records_a_failed_trial_and_reruns_nothing(tmp_path):
    """Four trials on Ray Tune, each a Ray Train + DeepSpeed run, and a fifth that fails
    (its starting weights are missing): the failure is recorded, the others finish and are
    accounted, fitted and plotted. Given the weights, a rerun runs that trial alone; a third
    run trains nothing."""
    start = tmp_path / "start.pt"
    lines = [f"overrides: {json.dumps([*TINY, 'evaluate.valid_users=100'])}", "grid:"]
    lines += ["  trainer.model.d_model: [32, 64]", "  trainer.data_fraction: [0.5, 1.0]"]
    lines += ["points:", f"  - {{trainer.model.d_model: 32, trainer.init_from: {start}}}"]
    sweep = load_sweep(_sweep_file(tmp_path, "\n".join(lines)), [f"run_dir={tmp_path / 'sweep'}"])
    folder = sweep.sweep_dir
    with pytest.raises(TrainingFailed, match=r"1 of 5 trials did not finish: 04-.*init_from"):
        run_sweep(sweep)
    with open(folder / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["status"] for row in rows] == ["finished"] * 4 + ["failed"]
    assert "trainer.init_from" in rows[4]["error"]
    for row in rows[:4]:
        assert (
            int(row["tokens"]) > 0 and int(row["flops"]) > 0 and float(row["best_valid_loss"]) > 0
        )
        assert int(row["non_embedding_parameters"]) < int(row["parameters"])
    half, full = (int(rows[i]["examples"]) for i in (0, 1))
    assert 0.35 < half / full < 0.65  # data_fraction 0.5 trains about half the examples
    assert int(rows[2]["non_embedding_parameters"]) > int(rows[0]["non_embedding_parameters"])
    record = json.loads((folder / "results.json").read_text())
    assert record["trials"][0]["config"]["trainer"]["data_fraction"] == 0.5
    fits = json.loads((folder / "fits.json").read_text())
    assert set(fits) >= {"valid_loss", "1-ndcg@10"} and fits["trials"] == 4
    for name in ("loss_vs_compute.png", "loss_vs_params.png", "loss_vs_data.png"):
        assert (folder / name).stat().st_size > 10_000
    shared = list((folder / "shared").iterdir())
    assert len(shared) == 1  # one data, features and tokenizer for every trial

    records = {p: p.stat().st_mtime_ns for p in folder.glob("trials/0[0-3]*/trial.json")}
    shutil.copyfile(folder / "trials" / rows[0]["name"] / "train" / "model.pt", start)
    assert "trials 5 of 5 finished" in run_sweep(sweep)
    assert {p: p.stat().st_mtime_ns for p in records} == records
    everything = {p: p.stat().st_mtime_ns for p in folder.rglob("trial.json")}
    run_sweep(sweep)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("trial.json")} == everything
