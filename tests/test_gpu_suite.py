"""benchmarks/gpu.sh on CPU with --tiny: every section runs and lands in its one JSON file."""

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_suite_runs_tiny_on_cpu(tmp_path, ray_cluster):
    out = tmp_path / "gpu.json"
    # The session's Ray (its environment: this Python's bin first), not a second instance.
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.address}
    command = ["bash", "benchmarks/gpu.sh", str(out), "--tiny", "--run-dir", str(tmp_path / "run")]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["train"][0]["preset"] == "tiny"
    assert report["train"][0]["samples_per_s"] > 0 and report["train"][0]["mfu"] is None
    assert report["beam_search"]["users_per_s"] > 0
    quality = report["quality"]
    assert quality["epochs"] == 1 and 0 < quality["test"]["ndcg@10"] <= 1
    assert set(quality["baselines"]) == {"popularity", "sasrec"}
