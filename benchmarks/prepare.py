"""Benchmark `genrec prepare` end to end on a synthetic log, in one process or on Ray.

Command:
    python benchmarks/prepare.py --interactions 10000000                 # one process
    python benchmarks/prepare.py --interactions 100000000 --engine ray   # Ray, one node
    python benchmarks/prepare.py --interactions 10000000 --engine ray --nodes 2 --check

`--engine local` (the one-process prepare) generates the log in memory and prepares it.
`--engine ray` first writes the log as Parquet files (a Ray task per chunk of 100,000 users),
then prepares that folder with `data.engine=ray` (`--nodes 1`: a local instance as `genrec`
starts it; more: `ray start` nodes on this machine, a CPU each). `--check` then prepares the
same folder in one process and says whether the two datasets are equal (every table, every
shard's sha256). Prints wall time, interactions/s and the peak RSS of every process: the
driver, and each Ray role (GCS, raylet, workers by their task).
"""

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from local_cluster import local_cluster
from process_memory import TreeMemory

from genrec.cluster.runtime import ray_session
from genrec.config import load_config
from genrec.data_pipeline.prepare import load_manifest, prepare
from genrec.data_pipeline.ray_prepare import synthetic_log

TABLES = ("users", "items", "sequences", "valid", "test", "holdout")


def same_dataset(a: Path, b: Path) -> bool:
    """Every table equal and every shard's hash."""
    tables = all(
        pq.read_table(a / f"{name}.parquet").equals(pq.read_table(b / f"{name}.parquet"))
        for name in TABLES
    )
    return tables and load_manifest(a)["shards"] == load_manifest(b)["shards"]


def on_ray(args: argparse.Namespace, run_dir: Path, overrides: list[str]) -> tuple[Path, dict]:
    """Writes the log's files, then prepares them on Ray; returns the dataset and figures."""
    spill = run_dir / "ray_spill"
    cfg = load_config([], [f"run_dir={run_dir}", *overrides])
    if args.nodes == 1:
        session = ray_session(cfg.cluster, spill_dir=spill)
    else:
        spilling = {"type": "filesystem", "params": {"directory_path": str(spill)}}
        system = json.dumps({"object_spilling_config": json.dumps(spilling)})
        session = local_cluster(args.nodes, run_dir, (f"--system-config={system}",))
    with session:
        started = time.perf_counter()
        _, files, _ = synthetic_log(cfg)
        figures = {"synthesize_s": time.perf_counter() - started, "files": len(files)}
        log = ["data.format=log", f"data.interactions={files[0].parent}", "data.engine=ray"]
        cfg = load_config([], [f"run_dir={run_dir}", *overrides, *log])
        memory = TreeMemory()
        memory.start()
        started = time.perf_counter()
        data_dir = prepare(cfg)
        figures["prepare_s"] = time.perf_counter() - started
        memory.stop.set()
    return data_dir, figures | {"peaks": memory.peaks, "total": memory.total}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--mean-length", type=float, default=12.0)
    parser.add_argument("--items-per-interaction", type=float, default=0.01)
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--nodes", type=int, default=1, help="Ray nodes (--engine ray)")
    parser.add_argument("--check", action="store_true", help="compare with one process")
    parser.add_argument("--run-dir", help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    users = int(args.interactions / args.mean_length)
    items = max(int(args.interactions * args.items_per_interaction), 100)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="genrec-bench-prepare-"))
    overrides = [
        f"data.synthetic.num_users={users}",
        f"data.synthetic.num_items={items}",
        f"data.synthetic.mean_length={args.mean_length}",
        "data.synthetic.users_per_chunk=100000",
    ]
    command = " ".join(sys.argv[1:])
    try:
        if args.engine == "ray":
            data_dir, figures = on_ray(args, run_dir, overrides)
            wall = figures["prepare_s"]
        else:
            start = time.perf_counter()
            data_dir = prepare(load_config([], [f"run_dir={run_dir}", *overrides]))
            wall, figures = time.perf_counter() - start, {}
        manifest = load_manifest(data_dir)
        if args.check:
            files = [f"data.interactions={run_dir / 'synthetic_log'}", "data.format=log"]
            here = load_config([], [f"run_dir={run_dir / 'one-process'}", *overrides, *files])
            equal = same_dataset(prepare(here), data_dir)
    finally:
        if not args.run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    raw = manifest["raw"]["interactions"]
    driver_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"command: python benchmarks/prepare.py {command}")
    print(f"generated interactions: {raw:,} ({users:,} users, {items:,} items)")
    print(
        f"kept after 5-core: {manifest['num_interactions']:,} interactions, "
        f"{manifest['num_users']:,} users, {manifest['num_items']:,} items, "
        f"{len(manifest['shards'])} shards, {manifest['num_train_examples']:,} train examples"
    )
    if figures:
        print(f"log written as {figures['files']} Parquet files in {figures['synthesize_s']:.1f} s")
    print(f"prepare wall time ({manifest['engine']}, {args.nodes} node(s)): {wall:.1f} s")
    print(f"throughput: {raw / wall / 1e6:.2f} M interactions/s")
    print(f"peak RSS of this process (driver): {driver_gib:.2f} GiB")
    if figures:
        peaks = figures["peaks"]
        workers = sorted((-p[1], r) for r, p in peaks.items() if r.startswith("worker"))
        roles = ["driver", "raylet", "gcs_server", *(role for _, role in workers[:3])]
        print("  peak memory during prepare, RSS / private (RSS less shared pages):")
        for role in roles:
            rss, private = peaks.get(role, (0.0, 0.0))
            print(f"    {role}: {rss:,.0f} / {private:,.0f} MiB")
        total = figures["total"] / 1024
        print(f"  largest private sum of the Ray processes and the driver: {total:.2f} GiB")
    if args.check:
        print(f"dataset equal to the one-process prepare of the same files: {equal}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
