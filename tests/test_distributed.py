"""Training on Ray Train with DeepSpeed, for real: local Ray, gloo, CPU DeepSpeed ranks."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genrec import stages
from genrec.cli import main
from genrec.cluster.train_job import train
from genrec.config import load_config
from genrec.errors import ConfigError, TrainingFailed
from genrec.methods import method_spec
from genrec.trainer.evaluate import evaluate_checkpoint

# Every run joins the session's Ray head (conftest.ray_cluster) instead of starting its own.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

TINY = [
    "data.synthetic.num_users=300",
    "data.synthetic.num_items=90",
    "data.users_per_shard=25",
    "sasrec.epochs=2",
    "lightgcn.epochs=2",
    "tokenizer.epochs=3",
    "tokenizer.codebook_size=16",
    "tokenizer.hidden_dims=[64]",
    "tokenizer.latent_dim=16",
    "trainer.epochs=1",
    "trainer.batch_size=64",
    "trainer.micro_batch_size=32",
    "trainer.eval_every=16",
    "trainer.warmup_steps=5",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Data and semantic IDs shared by every run here."""
    cfg = load_config([], [f"run_dir={tmp_path_factory.mktemp('inputs')}", *TINY])
    return stages.data(cfg), stages.tokenize(cfg)


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory):
    """Trains (once per setting) and returns (config, output folder, train.json)."""
    done = {}

    def run(*overrides: str):
        if overrides not in done:
            folder = tmp_path_factory.mktemp("train")
            cfg = load_config([], [f"run_dir={folder}", *TINY, *overrides])
            out = train(cfg, *inputs, folder / "train")
            done[overrides] = cfg, out, json.loads((out / "train.json").read_text())
        return done[overrides]

    return run


STAGES = {
    1: ("trainer.zero_stage=1",),
    2: ("trainer.zero_stage=2", "trainer.model.num_user_buckets=64", "trainer.eval_every=48"),
    3: ("trainer.zero_stage=3", "trainer.eval_every=48"),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_two_workers_train_and_evaluate_with_every_zero_stage(runs, inputs, stage):
    """Each ZeRO stage trains on 2 ranks (stage 2 with hashed user tokens too), and the
    consolidated model.pt (gathered from the shards under ZeRO-3) scores the validation users
    exactly as the live model did."""
    cfg, out, summary = runs("cluster.num_workers=2", *STAGES[stage])
    assert summary["workers"] == 2 and summary["zero_stage"] == stage
    assert summary["model"]["num_user_buckets"] == (cfg.trainer.model.num_user_buckets or 0)
    assert summary["steps"] >= 40 and summary["epochs"] == pytest.approx(1, abs=0.1)
    method = method_spec(cfg.method)
    metrics = evaluate_checkpoint(cfg, method, out / "model.pt", *inputs, {}, out / "metrics.json")
    assert metrics["trained_steps"] == summary["best_step"]
    for key, value in metrics["valid"].items():
        assert value == pytest.approx(summary["valid"][key], abs=1e-6), key


def test_one_and_two_workers_reach_the_same_loss(runs):
    """Same global batch and seed: the validation loss follows the same curve (the shards
    reach the workers in a different order, so equal up to that noise)."""
    _, _, one = runs("cluster.num_workers=1", "trainer.zero_stage=1")
    _, _, two = runs("cluster.num_workers=2", "trainer.zero_stage=1")
    losses = [{v["step"]: v["loss"] for v in run["validations"]} for run in (one, two)]
    steps = sorted(losses[0].keys() & losses[1].keys())
    assert len(steps) >= 2 and losses[0][steps[-1]] < 0.95 * losses[0][steps[0]]
    for step in steps:
        assert losses[1][step] == pytest.approx(losses[0][step], rel=0.03), step


def test_the_same_seed_trains_the_same_model(runs):
    """Ray Data hands the shards over in stream order, so two runs of one config (but for how
    often the loss is logged) validate identically, to the last digit."""
    _, _, first = runs("cluster.num_workers=1", "trainer.zero_stage=1")
    _, _, again = runs("cluster.num_workers=1", "trainer.zero_stage=1", "trainer.log_every=7")
    assert len(first["validations"]) >= 2
    assert again["validations"] == first["validations"]


def test_killed_worker_restarts_from_its_last_checkpoint(runs):
    """Worker 1 dies at step 55; the run restarts from the step-50 checkpoint, opens none of
    the shards finished before it, skips the rows trained on, and completes both epochs
    (re-training at most what sat in the workers' shuffle buffers and length pools)."""
    _, out, summary = runs(
        "cluster.num_workers=2",
        "trainer.epochs=2",
        "trainer.checkpoint_every=10",
        "cluster.fail_at_step=55",
        "cluster.max_failures=1",
        "trainer.shuffle_buffer=64",
    )
    first, second = summary["attempts"]
    assert first["step"] == 0 and second["step"] == 50
    done = set(second["position"]["done"])
    assert done and not done & set(second["read"])
    assert set(first["read"]) | set(second["read"]) == set(range(24))
    assert 1.9 < summary["epochs"] < 2.8
    assert (out / "model.pt").is_file()


def test_a_failed_run_resumes_when_submitted_again(inputs, tmp_path):
    """Without restarts the drill ends the run; the same command again (same run name and
    storage) resumes from the step-50 checkpoint instead of starting over."""
    overrides = [f"run_dir={tmp_path}", *TINY, "trainer.checkpoint_every=10"]
    overrides += ["trainer.epochs=2", "trainer.shuffle_buffer=64", "cluster.num_workers=2"]
    failing = load_config([], [*overrides, "cluster.fail_at_step=55"])
    with pytest.raises(TrainingFailed, match=r"worker 1 was lost .*run the same command again"):
        train(failing, *inputs, tmp_path / "train")
    train(load_config([], overrides), *inputs, tmp_path / "train")
    summary = json.loads((tmp_path / "train" / "train.json").read_text())
    (attempt,) = summary["attempts"]
    assert attempt["step"] == 50 and attempt["position"]["done"]
    assert summary["steps"] >= 90


def test_unschedulable_workers_fail_with_a_clear_error(inputs, tmp_path):
    cfg = load_config(
        [],
        [f"run_dir={tmp_path}", *TINY, "cluster.use_gpu=true", "cluster.schedule_timeout_s=1"],
    )
    with pytest.raises(ConfigError, match=r"cannot schedule cluster\.num_workers=1 workers"):
        train(cfg, *inputs, tmp_path / "train")


def test_ray_job_submit(inputs, tmp_path, ray_cluster):
    """`ray job submit -- genrec train ...` to the head's job server: the job's driver joins
    that cluster (RAY_ADDRESS) rather than starting one."""
    run_dir = _copy_inputs(inputs, tmp_path / "job")
    bin_dir = Path(sys.executable).parent
    submit = [str(bin_dir / "ray"), "job", "submit", f"--address={ray_cluster}", "--"]
    submit += [
        str(bin_dir / "genrec"),
        "train",
        f"run_dir={run_dir}",
        *TINY,
        "trainer.eval_every=99",
    ]
    done = subprocess.run(submit, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout.lower()
    summary = json.loads((run_dir / "train" / "train.json").read_text())
    assert summary["steps"] >= 40 and (run_dir / "train" / "model.pt").is_file()
    assert summary["ray_run"].startswith(str(run_dir / "train" / "ray"))


def test_two_workers_train_on_the_default_batch_settings(runs):
    """No batch keys set: each of 2 workers takes half of the default global batch (256)."""
    *_, summary = runs(
        "cluster.num_workers=2", "trainer.batch_size=256", "trainer.micro_batch_size=null"
    )
    assert summary["workers"] == 2 and summary["steps"] >= 4
    assert summary["samples"] == pytest.approx(summary["steps"] * 256, abs=256)


def _copy_inputs(inputs, run_dir: Path) -> Path:
    """A run folder holding the shared data, features and tokenizer, for a run to change."""
    data_dir, tokenizer_dir = inputs
    shutil.copytree(data_dir, run_dir / "data")
    shutil.copytree(tokenizer_dir.parent / "features", run_dir / "features")
    shutil.copytree(tokenizer_dir, run_dir / "tokenizer")
    return run_dir


def _last_line_of(argv: list[str], capsys) -> str:
    """Runs the CLI in this process (joining the session's Ray) and returns its last line."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_damaged_shard_ends_the_run_with_one_line_naming_it(inputs, tmp_path, capsys):
    """The read task's DataError crosses Ray Data and the worker group to the CLI intact."""
    run_dir = _copy_inputs(inputs, tmp_path / "damaged")
    shard = run_dir / "data" / "shards" / "train-000000.tar"
    blob = bytearray(shard.read_bytes())
    blob[1000] ^= 0xFF
    shard.write_bytes(bytes(blob))
    line = _last_line_of(["train", f"run_dir={run_dir}", *TINY], capsys)
    assert line == (
        f"genrec train: error: {shard}: checksum mismatch: the shard was damaged or replaced; "
        "run genrec prepare again"
    )


def test_a_bad_key_inside_a_worker_ends_the_run_with_one_line_naming_it(inputs, tmp_path, capsys):
    """Only a worker knows whether it has a GPU: its ConfigError is the run's last line."""
    run_dir = _copy_inputs(inputs, tmp_path / "cuda")
    line = _last_line_of(["train", f"run_dir={run_dir}", *TINY, "trainer.device=cuda"], capsys)
    assert line == (
        "genrec train: error: config key 'trainer.device' is 'cuda' but no GPU is available"
    )
