"""What it costs to set up the training stream of many work units (a unit is one shard in one
epoch: `trainer.epochs` x shards, 200 x 4,062 = 812,400 on the 10^8 preset at the default
epoch cap).

Command:
    python benchmarks/stream_setup.py [--units 40000 ...]

Prepares the built-in default data, then for each unit count builds `training_stream` over
units / shards epochs on a local Ray instance and times the call, the first block a consumer
receives, and the driver's RSS growth. Prints one line per count.
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import ray

from genrec.cluster.runtime import ray_session
from genrec.config import load_config
from genrec.data_pipeline.prepare import load_manifest, prepare
from genrec.data_pipeline.ray_ingest import DataPosition, start_board, training_stream


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(data_dir: Path, units: int) -> None:
    shards = len(load_manifest(data_dir)["shards"])
    epochs = max(1, units // shards)
    board = start_board()
    ray.get(board.start.remote(DataPosition().state_dict(), 0))
    before, started = peak_rss_mib(), time.perf_counter()
    stream = training_stream(data_dir, epochs, 0, board)
    built = time.perf_counter() - started
    next(iter(stream.iter_batches(batch_size=None)))
    first = time.perf_counter() - started
    print(
        f"{epochs * shards:,} units ({epochs} epochs x {shards} shards): training_stream "
        f"{built:.2f} s, first block after {first:.2f} s, driver peak RSS "
        f"+{peak_rss_mib() - before:,.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, nargs="*", default=[40_000])
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="genrec-bench-setup-"))
    cfg = load_config([], [f"run_dir={run_dir}"])
    data_dir = prepare(cfg)
    with ray_session(cfg.cluster):
        ray.data.DataContext.get_current().enable_progress_bars = False
        for units in args.units:
            measure(data_dir, units)
    print(f"command: python benchmarks/stream_setup.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
