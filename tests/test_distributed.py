"""Training on Ray Train with DeepSpeed, for real: Ray, gloo, CPU DeepSpeed ranks.

Every run joins the session's Ray head (conftest.ray_cluster); the fault tests kill workers
and nodes from outside and audit every row the workers received (`cluster.record_rows`).
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from ray.job_submission import JobSubmissionClient
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.state import list_actors

from genrec import stages
from genrec.cli import main
from genrec.cluster.train_job import train
from genrec.config import config_from_dict, load_config
from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.ray_ingest import unit_sizes
from genrec.data_pipeline.streaming import TrainExamples, collate
from genrec.errors import ConfigError, TrainingFailed
from genrec.methods import method_spec
from genrec.provenance import to_plain
from genrec.trainer.evaluate import evaluate_checkpoint
from genrec.trainer.train import DEEPSPEED_TAG
from tests.conftest import TINY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]
REPO = Path(__file__).resolve().parents[1]

# Fault runs: two epochs, a checkpoint every 10 steps, every received row recorded.
FAULT = [
    "cluster.num_workers=2",
    "trainer.epochs=2",
    "trainer.checkpoint_every=10",
    "trainer.shuffle_buffer=64",
    "cluster.record_rows=true",
]
POOL_BATCHES = 32  # stream_batches' length pool, in batches


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Data and semantic IDs shared by every run here."""
    cfg = load_config([], [f"run_dir={tmp_path_factory.mktemp('inputs')}", *TINY])
    return stages.data(cfg), stages.id_tables(cfg)


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


def _copy_inputs(inputs, run_dir: Path) -> Path:
    """A run folder holding the shared data, features and tokenizer, for a run to change."""
    data_dir, tables = inputs
    tokenizer_dir = tables[0].parent.parent
    shutil.copytree(data_dir, run_dir / "data")
    shutil.copytree(tokenizer_dir.parent / "features", run_dir / "features")
    shutil.copytree(tokenizer_dir, run_dir / "tokenizer")
    return run_dir


def _checkpoint_steps(summary: dict) -> dict[int, Path]:
    """The step of each checkpoint Ray kept for the run."""
    folders = Path(summary["ray_run"]).glob("checkpoint_*/progress.pt")
    return {torch.load(path, weights_only=True)["step"]: path.parent for path in folders}


STAGES = {
    1: ("trainer.zero_stage=1",),
    2: ("trainer.zero_stage=2", "trainer.model.num_user_buckets=64", "trainer.eval_every=48"),
    3: ("trainer.zero_stage=3", "trainer.eval_every=48"),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_two_workers_train_and_evaluate_with_every_zero_stage(runs, inputs, stage):
    """Each ZeRO stage trains on 2 ranks (stage 2 with hashed user tokens too); model.pt
    scores the validation users as the live model did, and, under ZeRO 2 and 3, equals tensor
    for tensor what DeepSpeed's own zero_to_fp32 consolidates from the checkpoint's shards."""
    cfg, out, summary = runs("cluster.num_workers=2", *STAGES[stage])
    assert summary["workers"] == 2 and summary["zero_stage"] == stage
    assert summary["model"]["num_user_buckets"] == (cfg.trainer.model.num_user_buckets or 0)
    assert summary["steps"] >= 40 and summary["epochs"] == pytest.approx(1, abs=0.1)
    method = method_spec(cfg.method)
    metrics = evaluate_checkpoint(cfg, method, out / "model.pt", *inputs, {}, out / "metrics.json")
    assert metrics["trained_steps"] == summary["best_step"]
    for key, value in metrics["valid"].items():
        assert value == pytest.approx(summary["valid"][key], abs=1e-6), key
    if stage < 2:
        return
    folder = _checkpoint_steps(summary)[summary["best_step"]]
    shards = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=DEEPSPEED_TAG)
    weights = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert shards.keys() == weights.keys()
    for name, tensor in shards.items():
        assert torch.equal(tensor, weights[name]), name


def _global_batches(data_dir: Path, count: int, size: int) -> list[dict[str, torch.Tensor]]:
    """The first `count` batches of the shards' examples in file order (no shuffle)."""
    examples = iter(TrainExamples(data_dir, max_history=50, shuffle_buffer=0))
    batches = []
    for _ in range(count):
        batch = collate([next(examples) for _ in range(size)])
        batches.append(batch | {"group": torch.zeros(size, dtype=torch.long)})
    return batches


def _losses_on(inputs, storage: Path, stage: int, workers: int, batches: list) -> list[float]:
    """The global batch's training loss at each step of a Ray Train + DeepSpeed run whose rank
    r trains rows r, r + workers, ... of every global batch (micro-batch = batch / workers)."""
    setting = [f"trainer.zero_stage={stage}", f"cluster.num_workers={workers}"]
    cfg = load_config([], [*TINY, f"run_dir={storage}", *setting, "trainer.micro_batch_size=null"])
    out = storage / f"losses-{stage}-{workers}.json"
    job = {"cfg": to_plain(cfg), "data": str(inputs[0]), "tables": [str(p) for p in inputs[1]]}

    def loop_per_worker(config: dict) -> None:  # a closure: Ray ships it by value
        from genrec.trainer.train import Loop

        torch.set_num_threads(1)
        cfg = config_from_dict(config["cfg"])
        tiger = method_spec("tiger")
        tables = [Path(path) for path in config["tables"]]
        loop = Loop(cfg, Path(config["data"]), tables, "equal", tiger)
        rank, world = loop.rank, loop.world_size
        losses = []
        for rows in batches:
            loss = loop.micro_step({k: v[rank::world] for k, v in rows.items()})["loss"]
            total = loss.reshape(1).double()
            torch.distributed.all_reduce(total)
            losses.append(float(total) / world)
        if rank == 0:
            out.write_text(json.dumps(losses))

    trainer = TorchTrainer(
        loop_per_worker,
        train_loop_config=job,
        scaling_config=ScalingConfig(num_workers=workers),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"equal-{stage}-{workers}", storage_path=str(storage)),
    )
    trainer.fit()
    return json.loads(out.read_text())


def test_one_and_two_workers_train_alike(inputs, tmp_path):
    """Fed the identical global batches in a fixed order, 1 and 2 workers (each half of the
    batch) give the same loss at each step, to 1e-5, at ZeRO 0, 2 and 3: gradients are
    averaged across ranks exactly as one rank's full batch would give them."""
    batches = _global_batches(inputs[0], count=6, size=64)
    reference = _losses_on(inputs, tmp_path, 0, 1, batches)
    assert reference[-1] < reference[0] - 0.1
    for stage in (0, 2, 3):
        for workers in (1, 2):
            if (stage, workers) == (0, 1):
                continue
            losses = _losses_on(inputs, tmp_path, stage, workers, batches)
            gap = max(abs(a - b) for a, b in zip(losses, reference, strict=True))
            print(f"ZeRO-{stage}, {workers} worker(s): largest loss difference {gap:.2e}")
            assert losses == pytest.approx(reference, abs=1e-5), (stage, workers)


def test_the_same_seed_trains_the_same_model(runs):
    """Ray Data hands the shards over in stream order, so two runs of one config (but for how
    often the loss is logged) validate identically, to the last digit."""
    _, _, first = runs("cluster.num_workers=1", "trainer.zero_stage=1")
    _, _, again = runs("cluster.num_workers=1", "trainer.zero_stage=1", "trainer.log_every=7")
    assert len(first["validations"]) >= 2
    assert untimed(again["validations"]) == untimed(first["validations"])


def untimed(validations: list[dict]) -> list[dict]:
    """The validation records without their wall-clock costs, which vary run to run."""
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in validations]


def audit(summary: dict, data_dir: Path, epochs: int, seed: int, capacity: int) -> dict:
    """Checks the resumed attempt against the position it resumed from, with the rows each
    worker received (train.json): no row trained before the checkpoint is received again,
    none is received twice, none is lost; exactly the in-flight rows' trained examples are
    trained a second time, and at most what the workers' buffers held is in flight."""
    sizes = unit_sizes(data_dir, epochs, seed)
    every = {(unit, row) for unit, size in enumerate(sizes) for row in range(size)}
    resumed = summary["attempts"][-1]
    position = resumed["position"]
    trained = {(unit, row) for unit in position["done"] for row in range(sizes[unit])}
    trained |= {(int(unit), row) for unit, rows in position["rows"].items() for row in rows}
    received = [tuple(pair) for rows in resumed["received"].values() for pair in rows]
    assert len(received) == len(set(received)), "a row was received twice"
    assert not set(received) & trained, "a row trained before the checkpoint came again"
    assert set(received) | trained == every, "rows were lost"
    in_flight = {
        (int(unit), int(row)): count
        for unit, rows in position["in_flight"].items()
        for row, count in rows.items()
    }
    assert set(in_flight) <= set(received)
    assert len(in_flight) <= capacity
    done_units = set(position["done"])
    assert not done_units & set(resumed["read"]), "a finished unit was opened again"
    assert summary["position"]["done"] == list(range(len(sizes))), "rows were left untrained"
    return {
        "resumed_at": resumed["step"],
        "rows_in_flight": len(in_flight),
        "examples_trained_twice": sum(in_flight.values()),
    }


def _held_step(storage: Path) -> int | None:
    """The step of the newest checkpoint Ray has registered for the run in `storage`."""
    for snapshot in storage.rglob("checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
        except (OSError, ValueError):
            return None
        return latest["metrics"]["step"] if latest else None
    return None


class Killer(threading.Thread):
    """SIGKILLs one training worker's process, chosen at random, a random moment after Ray
    has registered the run's first checkpoint; no warning reaches the worker. `held` is the
    step of the newest checkpoint Ray held just before the kill."""

    def __init__(self, storage: Path, seed: int):
        super().__init__(daemon=True)
        self.storage, self.rng = storage, np.random.default_rng(seed)
        self.killed: int | None = None
        self.held: int | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while _held_step(self.storage) is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        time.sleep(self.rng.uniform(0.2, 2.0))
        workers = list_actors(
            filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
        )
        self.held = _held_step(self.storage)
        self.killed = int(self.rng.choice(sorted(actor.pid for actor in workers)))
        os.kill(self.killed, signal.SIGKILL)


def _capacity(workers: int, micro_batch: int, shuffle_buffer: int) -> int:
    return workers * (shuffle_buffer + micro_batch * POOL_BATCHES)


@pytest.mark.parametrize(
    "stage, encoder", [(0, "bidirectional"), (3, "bidirectional"), (0, "causal")]
)
def test_a_worker_killed_from_outside_resumes_without_repeating_or_losing_rows(
    inputs, tmp_path, stage, encoder
):
    """SIGKILL at a random step: the run restarts from the newest checkpoint Ray holds and
    finishes; the audit holds (the causal encoder's windows too: mid-epoch, no row lost or
    trained twice but those in flight)."""
    overrides = [f"run_dir={tmp_path}", *TINY, *FAULT, f"trainer.zero_stage={stage}"]
    overrides.append(f"trainer.model.encoder={encoder}")
    cfg = load_config([], [*overrides, "cluster.max_failures=1"])
    killer = Killer(tmp_path / "train" / "ray", seed=stage)
    killer.start()
    out = train(cfg, *inputs, tmp_path / "train")
    killer.join()
    summary = json.loads((out / "train.json").read_text())
    first, second = summary["attempts"]
    assert killer.killed is not None and killer.held is not None
    assert second["step"] >= killer.held > 0 and second["step"] in first["checkpoints"]
    assert first["reached"] >= second["step"]
    figures = audit(summary, inputs[0], 2, cfg.seed, _capacity(2, 32, 64))
    assert summary["epochs"] >= 1.9 and (out / "model.pt").is_file()
    print(f"ZeRO-{stage}, {encoder}: lost {first['reached'] - second['step']} steps; {figures}")


def test_a_failed_run_resumes_when_submitted_again(inputs, tmp_path):
    """Without restarts the drill ends the run with one line that says how to resume; the
    same command again resumes from the newest checkpoint, and the audit holds (the prefix
    examples' step count; the causal windows are drilled above)."""
    overrides = [f"run_dir={tmp_path}", *TINY, *FAULT, "trainer.model.encoder=bidirectional"]
    failing = load_config([], [*overrides, "cluster.fail_at_step=55"])
    with pytest.raises(TrainingFailed, match=r"worker 1 was lost .*run the same command again"):
        train(failing, *inputs, tmp_path / "train")
    train(load_config([], overrides), *inputs, tmp_path / "train")
    summary = json.loads((tmp_path / "train" / "train.json").read_text())
    (attempt,) = summary["attempts"]
    assert attempt["step"] in (40, 50) and summary["steps"] >= 90
    audit(summary, inputs[0], 2, failing.seed, _capacity(2, 32, 64))


def test_unschedulable_workers_fail_with_a_clear_error(inputs, tmp_path):
    cfg = load_config(
        [],
        [f"run_dir={tmp_path}", *TINY, "cluster.use_gpu=true", "cluster.schedule_timeout_s=1"],
    )
    with pytest.raises(ConfigError, match=r"cannot schedule cluster\.num_workers=1 workers"):
        train(cfg, *inputs, tmp_path / "train")


def _runs_on(dashboard: str) -> list[dict]:
    """The head's Ray Train (v2) runs, as its dashboard serves them."""
    with urllib.request.urlopen(f"{dashboard}/api/train/v2/runs/v1", timeout=30) as response:
        return json.loads(response.read())["train_runs"]


def test_ray_job_submit_on_two_nodes_survives_a_lost_node(inputs, tmp_path, ray_cluster):
    """README's `ray job submit --working-dir . --runtime-env-json ...` form, 2 workers and the
    default batch keys, to the session head with a second node joined to it: one worker per
    node (each holds one `train_slot`), sharing only the storage path. The second node is
    stopped mid-run and a new one joins: the run restarts like after a killed worker (once more
    if Ray places a restarted worker on the stopped node before it learns the node is gone),
    ends, is the head's job and train run, and the audit holds."""
    run_dir = _copy_inputs(inputs, tmp_path / "job")
    default_batch = [o for o in TINY if not o.startswith("trainer.")] + ["trainer.epochs=3"]
    bin_dir = Path(sys.executable).parent
    submit = [str(bin_dir / "ray"), "job", "submit", f"--address={ray_cluster.dashboard}"]
    submit += ["--working-dir", ".", "--runtime-env-json"]
    submit += ['{"excludes": [".venv", ".git", "runs"]}', "--", str(bin_dir / "genrec"), "train"]
    submit += [f"run_dir={run_dir}", *default_batch, "cluster.num_workers=2"]
    submit += ['cluster.resources_per_worker={"CPU": 1, "train_slot": 1}']
    submit += ["cluster.max_failures=3", "trainer.checkpoint_every=3", "cluster.record_rows=true"]
    node = ray_cluster.add_node()
    log = tmp_path / "job.log"
    with log.open("w") as out:
        job = subprocess.Popen(submit, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while _held_step(run_dir / "train" / "ray") is None:
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        held = _held_step(run_dir / "train" / "ray")
        ray_cluster.stop_node(node)
        node = ray_cluster.add_node()
        job.wait(timeout=900)
    finally:
        ray_cluster.stop_node(node)
    output = log.read_text()
    assert job.returncode == 0, output[-3000:]
    summary = json.loads((run_dir / "train" / "train.json").read_text())
    first, *_, last = summary["attempts"]
    assert last["step"] >= held > 0 and last["step"] in first["checkpoints"]
    audit(summary, inputs[0], 3, 0, _capacity(2, 128, 4096))
    assert summary["workers"] == 2 and summary["steps"] >= 3 * 3058 // 256
    name = Path(summary["ray_run"]).name
    (run,) = [run for run in _runs_on(ray_cluster.dashboard) if run["name"] == name]
    assert run["status"] == "FINISHED" and len(run["attempts"]) >= 2
    nodes = {worker["node_id"] for worker in run["attempts"][0]["workers"]}
    assert len(nodes) == 2, "the two workers shared a node"
    jobs = JobSubmissionClient(ray_cluster.dashboard).list_jobs()
    (submitted,) = [j for j in jobs if j.status == "SUCCEEDED" and name in j.entrypoint + output]
    boards = list_actors(filters=[("class_name", "=", "PositionBoard")], detail=True)
    head = ray.get_runtime_context().get_node_id()
    assert {b.node_id for b in boards if b.job_id == submitted.job_id} == {head}


def test_two_workers_train_on_the_default_batch_settings(runs, inputs):
    """No batch keys set: each of 2 workers takes half of the default global batch (256).
    Every example is trained once; Ray Data deals the shards unevenly, so the last steps,
    where one worker has run dry, train fewer than 256."""
    *_, summary = runs(
        "cluster.num_workers=2", "trainer.batch_size=256", "trainer.micro_batch_size=null"
    )
    examples = load_manifest(inputs[0])["num_train_examples"]
    assert summary["workers"] == 2 and summary["samples"] == examples
    assert math.ceil(examples / 256) <= summary["steps"] <= math.ceil(examples / 256) + 2


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


def test_a_local_instance_beside_a_ray_start_head_asks_its_own_state_api(ray_cluster):
    """The session's head wrote /tmp/ray/ray_current_cluster; a run's own local instance must
    still resolve Ray's state API (Ray Train's placement-group cleaner asks it whether the
    run's controller lives) to itself, in its workers, or the cleaner removes the run's group."""
    script = (
        "import ray\n"
        "from genrec.cluster.runtime import ray_session\n"
        "from genrec.config import load_config\n"
        "@ray.remote\n"
        "def state_api():\n"
        "    from ray.dashboard.utils import get_address_for_submission_client\n"
        "    return get_address_for_submission_client(None)\n"
        "with ray_session(load_config([], []).cluster):\n"
        "    own = ray._private.worker.global_worker.node.address_info['webui_url']\n"
        "    print('own', own.split(':')[-1], 'asks', ray.get(state_api.remote()).split(':')[-1])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    own, asked = done.stdout.split()[-3], done.stdout.split()[-1]
    assert asked == own, f"{done.stdout}: the head is on {ray_cluster.dashboard}"
