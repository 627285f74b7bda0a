"""`genrec prepare` on Ray (`data.engine=ray`): the same dataset as the one-process prepare, a
log of many files, bad rows named by file and line, nothing half-written when killed."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from genrec.cli import main
from genrec.data_pipeline.prepare import load_manifest, prepare
from genrec.errors import DataError

REPO = Path(__file__).resolve().parents[1]
TABLES = ("users", "items", "sequences", "valid", "test", "holdout")
# What may differ between two preparations of one dataset.
UNRECORDED = ("created", "seconds", "engine", "config", "code", "sources")


def write_log(folder: Path, files: int = 5, rows: int = 6000, seed: int = 0) -> Path:
    """A log split over `files` CSV files: string user ids, items of skewed popularity, and
    timestamps with many ties (so only the rows' order in the log breaks them)."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 300, rows), rng.zipf(1.3, rows) % 200
    times = rng.integers(0, 30, rows)
    folder.mkdir(parents=True)
    for index, chunk in enumerate(np.array_split(np.arange(rows), files)):
        table = pa.table(
            {
                "user_id": [f"u{u}" for u in users[chunk]],
                "item_id": items[chunk],
                "timestamp": times[chunk],
            }
        )
        pacsv.write_csv(table, folder / f"part-{index}.csv")
    return folder


def assert_same_dataset(a: Path, b: Path, *may_differ: str) -> None:
    """Every table and shard equal, and the manifests equal but for when and how (and
    `may_differ`)."""
    for name in TABLES:
        assert pq.read_table(a / f"{name}.parquet").equals(pq.read_table(b / f"{name}.parquet")), (
            name
        )
    first, second = load_manifest(a), load_manifest(b)
    for key in (*UNRECORDED, *may_differ):
        first.pop(key), second.pop(key)
    assert first == second


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.holdout_users=0.1", "data.min_item_interactions=8"],
        ["data.format=synthetic", "data.synthetic.num_users=400", "data.synthetic.num_items=120"],
    ],
    ids=["five-csv-files", "synthetic"],
)
def test_ray_prepare_makes_the_one_process_dataset(ray_cluster, make_config, tmp_path, overrides):
    log = write_log(tmp_path / "log")
    common = ["data.format=log", f"data.interactions={log}", "data.users_per_shard=40", *overrides]
    here = prepare(make_config(*common, f"run_dir={tmp_path / 'here'}"))
    on_ray = prepare(make_config(*common, f"run_dir={tmp_path / 'ray'}", "data.engine=ray"))
    assert load_manifest(on_ray)["engine"] == "ray"
    assert len(load_manifest(on_ray)["shards"]) > 1
    assert_same_dataset(here, on_ray)


def test_a_log_of_many_files_is_the_log_of_their_rows_in_name_order(make_config, tmp_path):
    """A folder, a glob and one file holding the rows of all give one dataset; so does a
    gzipped JSON-lines copy."""
    log = write_log(tmp_path / "log")
    whole = pa.concat_tables(pacsv.read_csv(p) for p in sorted(log.iterdir()))
    pacsv.write_csv(whole, tmp_path / "whole.csv")
    with gzip.open(tmp_path / "whole.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(row) + "\n" for row in whole.to_pylist())
    made = {
        source: prepare(
            make_config(
                "data.format=log",
                f"data.interactions={source}",
                f"run_dir={tmp_path / str(index)}",
            )
        )
        for index, source in enumerate(
            [log, f"{log}/part-*.csv", tmp_path / "whole.csv", tmp_path / "whole.jsonl.gz"]
        )
    }
    folder, *others = made.values()
    for other in others:
        assert_same_dataset(folder, other, "fingerprint")  # a hash of the input files


def test_a_folder_mixing_formats_is_a_clear_error(make_config, tmp_path):
    log = write_log(tmp_path / "log")
    pq.write_table(pacsv.read_csv(log / "part-0.csv"), log / "extra.parquet")
    cfg = make_config("data.format=log", f"data.interactions={log}", "data.engine=ray")
    with pytest.raises(DataError) as err:
        prepare(cfg)
    assert str(err.value) == (
        f"{log}: mixes log formats: .csv (part-4.csv), .parquet (extra.parquet); give one "
        "format at a time"
    )


def test_a_bad_row_in_the_third_of_five_files_names_that_file_and_line(
    ray_cluster, tmp_path, capsys
):
    log = write_log(tmp_path / "log")
    lines = (log / "part-2.csv").read_text().splitlines()
    lines[6] = '"u1",oops,3,9'
    (log / "part-2.csv").write_text("\n".join(lines) + "\n")
    argv = ["prepare", f"run_dir={tmp_path / 'run'}", "data.format=log"]
    with pytest.raises(SystemExit) as stopped:
        main([*argv, f"data.interactions={log}", "data.engine=ray"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"genrec prepare: error: {log / 'part-2.csv'}: line 7: expected 3 columns, got 4"
    )
    assert not (tmp_path / "run" / "data").exists()


def test_a_prepare_killed_midway_leaves_nothing_half_written_and_the_rerun_finishes(
    ray_cluster, make_config, tmp_path
):
    """Killed (SIGKILL, its Ray with it) once its scratch folder holds files, the run leaves
    no dataset; run again, it finishes, the dead run's scratch gone, with the dataset the
    one-process prepare makes."""
    log = write_log(tmp_path / "log", files=8, rows=40_000)
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "genrec", "prepare", f"run_dir={run_dir}", "data.format=log"]
    argv += [f"data.interactions={log}", "data.engine=ray", "data.users_per_shard=40"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    killed = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while not any(run_dir.glob(".data.tmp-*/users.parquet")):
        assert killed.poll() is None and time.monotonic() < deadline, "it ended before the kill"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (run_dir / "data").exists()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in run_dir.glob(".data*")) == []
    here = make_config("data.format=log", f"data.interactions={log}", "data.users_per_shard=40")
    assert_same_dataset(prepare(here), run_dir / "data")
