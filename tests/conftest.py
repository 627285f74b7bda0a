import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import torch

from genrec.cluster.runtime import forget_head
from genrec.config import load_config
from genrec.trainer.engine import free_port

# Test models are tiny: one thread is faster than two contending ones, and timings stay stable
# when the machine is shared.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
# A tiny synthetic run: seconds a stage, for the tests that run the real pipeline.
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
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def shared_dataset(*parts: str) -> Path:
    """A file under ../shared/datasets. Missing, it fails the test with its path in CI
    (CI=true) and wherever ../shared exists; only a machine without ../shared skips."""
    path = SHARED.joinpath(*parts)
    if path.exists():
        return path
    if os.environ.get("CI", "").lower() == "true" or SHARED.parent.exists():
        pytest.fail(f"missing shared dataset file {path}")
    pytest.skip(f"needs {path} (the shared datasets)")


def on_train_workers(loop_per_worker, cfg, data_dir, tables, stage, workers, storage, name):
    """Runs `loop_per_worker(job)` on `workers` Ray Train ranks (gloo), where the job holds the
    config at ZeRO `stage`, the data folder and the semantic-ID tables, each as plain data."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from genrec.provenance import to_plain

    job = {
        "cfg": to_plain(cfg) | {"trainer": to_plain(cfg.trainer) | {"zero_stage": stage}},
        "data": str(data_dir),
        "tables": [str(t) for t in tables],
    }
    TorchTrainer(
        loop_per_worker,
        train_loop_config=job,
        scaling_config=ScalingConfig(num_workers=workers),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"{name}-{stage}-{workers}", storage_path=str(storage)),
    ).fit()


@pytest.fixture
def make_config(tmp_path):
    """A resolved config whose run_dir is this test's temporary folder."""

    def make(*overrides: str, files: tuple[str, ...] = ()):
        return load_config(list(files), [f"run_dir={tmp_path / 'run'}", *overrides])

    return make


@dataclass
class RayHead:
    """The session's Ray head (`ray start --head`): its GCS address, job server and the means
    to join more nodes to it, each with 2 CPUs and one `train_slot`."""

    address: str
    dashboard: str
    env: dict[str, str]
    logs: Path

    def _start(self, args: list[str], log: Path) -> subprocess.Popen:
        """`ray start ... --block` with free-picked ports; returns once it says it is up.
        `--block` ties the node's processes to one process: killing it takes them down at
        once (no 30 s drain) and touches no other Ray instance on the machine."""
        ray_bin = Path(sys.executable).parent / "ray"
        ports = [f"--dashboard-agent-listen-port={free_port()}"]
        ports += [f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        command = [str(ray_bin), "start", "--block", "--node-ip-address=127.0.0.1", *ports, *args]
        with log.open("w") as out:
            process = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while "block forever" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        return process

    @staticmethod
    def alive_nodes() -> set[str]:
        return {node["NodeID"] for node in ray.nodes() if node["Alive"]}

    def add_node(self) -> "JoinedNode":
        """Joins a node (`ray start --address`) and waits until the head counts it."""
        before = self.alive_nodes()
        log = self.logs / f"node-{time.monotonic_ns()}.log"
        args = [f"--address={self.address}", "--num-cpus=2", '--resources={"train_slot": 1}']
        process = self._start(args, log)
        deadline = time.monotonic() + 60
        while not (new := self.alive_nodes() - before):
            assert time.monotonic() < deadline, "the new node never joined"
            time.sleep(0.5)
        return JoinedNode(process, new.pop())

    def stop_node(self, node: "JoinedNode") -> None:
        """Kills the node's processes at once and waits until the head sees it dead."""
        node.process.kill()
        node.process.wait(timeout=120)
        deadline = time.monotonic() + 120
        while node.node_id in self.alive_nodes():
            assert time.monotonic() < deadline, "the head never noticed the node stop"
            time.sleep(0.5)


@dataclass
class JoinedNode:
    process: subprocess.Popen
    node_id: str


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A Ray head started as on a cluster (`ray start --head`, 3 CPUs and one `train_slot`),
    which every Ray test of the session joins; genrec, finding Ray connected, uses it instead
    of starting its own. Killing its blocking process at the end stops this head only."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_MODE"] = "disabled"  # a loopback head for this test session only
    port, dashboard = free_port(), free_port()
    logs = tmp_path_factory.mktemp("ray")
    head = RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", env, logs)
    args = ["--head", f"--port={port}", "--num-cpus=3", '--resources={"train_slot": 1}']
    args += ["--include-dashboard=true", "--disable-usage-stats", f"--dashboard-port={dashboard}"]
    process = head._start(args, logs / "head.log")
    try:
        ray.init(address=head.address)
        yield head
    finally:
        ray.shutdown()
        process.kill()
        process.wait(timeout=120)
        forget_head(port)
