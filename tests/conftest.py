import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from genrec.config import load_config
from genrec.trainer.engine import free_port

# Test models are tiny: one thread is faster than two contending ones, and timings stay stable
# when the machine is shared.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def shared_dataset(*parts: str) -> Path:
    """A file under ../shared/datasets, or a clean skip where that folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared datasets)")
    return path


@pytest.fixture
def make_config(tmp_path):
    """A resolved config whose run_dir is this test's temporary folder."""

    def make(*overrides: str, files: tuple[str, ...] = ()):
        return load_config(list(files), [f"run_dir={tmp_path / 'run'}", *overrides])

    return make


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A Ray head started as on a cluster (`ray start --head`, 3 CPUs: two training workers and
    their read tasks), which every Ray test of the session joins; genrec, finding Ray
    connected, uses it instead of starting its own. Yields the job server's address.

    Ports are free-picked and `--block` ties the head's processes to one process (killing it
    takes them down at once, skipping the 30 s drain), so the end of the session stops only
    this head, never another Ray instance on the machine."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_MODE"] = "disabled"  # a loopback head for this test session only
    port, dashboard, agent = free_port(), free_port(), free_port()
    head = [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1"]
    head += [f"--port={port}", "--num-cpus=3", "--include-dashboard=true", "--disable-usage-stats"]
    head += [f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}"]
    log = tmp_path_factory.mktemp("ray") / "head.log"
    with log.open("w") as out:
        process = subprocess.Popen(head, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "block forever" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        ray.init(address=f"127.0.0.1:{port}")
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        ray.shutdown()
        process.kill()
        process.wait(timeout=120)
