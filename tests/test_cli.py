"""The `genrec` console script, run as a user would."""

import json
import subprocess
import sys
import time

import pytest


def genrec(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "genrec", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_prepare_with_preset_and_overrides(tmp_path):
    preset = tmp_path / "small.yaml"
    preset.write_text("data:\n  synthetic:\n    num_users: 200\n    num_items: 60\n")
    done = genrec("prepare", str(preset), "run_dir=out", "data.max_history=5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "data" / "manifest.json").read_text())
    assert manifest["config"]["data"]["synthetic"]["num_users"] == 200
    assert manifest["max_history"] == 5


def test_unknown_key_is_a_clear_error(tmp_path):
    done = genrec("prepare", "data.min_users=3", cwd=tmp_path)
    assert done.returncode == 2
    assert "config key 'data.min_users'" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_data_is_a_clear_error(tmp_path):
    (tmp_path / "s.txt").write_text("1 2 3\n2 x\n")
    done = genrec(
        "prepare",
        "data.format=sequences",
        "data.interactions=s.txt",
        "data.id_type=int",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "s.txt: line 2: non-numeric id 'x'" in done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("manifest.json"))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("cluster.num_workers=3", "trainer.batch_size"),
        ("trainer.zero_stage=4", "trainer.zero_stage"),
        ("method=hstu", "method"),
    ],
)
def test_a_config_that_cannot_work_fails_before_anything_runs(tmp_path, override, key):
    """Checked when the config is loaded: no stage has written anything, no Ray has started,
    and the one line names the key."""
    started = time.monotonic()
    done = genrec("run", f"run_dir={tmp_path / 'run'}", override, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"genrec run: error: config key '{key}'")
    assert not (tmp_path / "run").exists() and "Ray" not in done.stdout + done.stderr
    assert time.monotonic() - started < 30


def test_genrec_config_lists_every_key(tmp_path):
    done = genrec("config", "cluster.num_workers=4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "cluster.num_workers=4" in [line.split(" #")[0].strip() for line in lines]
    assert all(" # " in line for line in lines)
