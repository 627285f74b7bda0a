"""The training stream's examples/s per worker, without a model: what a worker's CPU can feed
its device (issue 31).

Command:
    python benchmarks/stream_throughput.py [DATASET ...] [--seconds 60] [--ray]
        [--set key=value ...]

For each dataset (a preset of configs/datasets, or `default` for the built-in synthetic log;
default: default, amazon14_beauty, synthetic_long) it prepares the data, gives the items random
semantic IDs (3 x 256 codes and the dedup code), then runs one worker's part of training as
`genrec train` runs it, minus the model: the shards' sequences in blocks of 256 as Ray Data
hands them over, `stream_batches` (prefix or window cutting, shuffle pool, length grouping,
collation, row accounting) and `Batch.coded` (each item's codes looked up) at the default
batch size, for --seconds. With --ray the sequences come through Ray Data's training stream
(`training_stream`: read tasks over the work units, on a local Ray instance) instead of being read
here. Prints targets/s and batches/s, and the share of the code lookup.
"""

import argparse
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from genrec.cluster.runtime import ray_session
from genrec.cluster.train_job import SEQUENCES_PER_READ
from genrec.config import load_config
from genrec.data_pipeline.example_arrays import sequence_table
from genrec.data_pipeline.prepare import load_manifest, prepare
from genrec.data_pipeline.ray_ingest import (
    DataPosition,
    PositionTracker,
    start_board,
    stream_batches,
    training_stream,
)
from genrec.data_pipeline.shards import shard_arrays
from genrec.tokenizers.collisions import dedup_codes
from genrec.tokenizers.tokenize import id_table
from genrec.trainer.config import batch_plan, window_stride
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.objective import Batch, targets_in

LEVELS, CODES = 3, 256
PRESETS = Path(__file__).resolve().parents[1] / "configs" / "datasets"


def blocks(data_dir: Path):
    """Every shard's sequences, over and over, in blocks as Ray Data hands them to a worker."""
    shards = load_manifest(data_dir)["shards"]
    for unit in range(10**9):
        keys, offsets, items = shard_arrays(data_dir / shards[unit % len(shards)]["path"])
        for start in range(0, len(keys), SEQUENCES_PER_READ):
            rows = np.arange(start, min(start + SEQUENCES_PER_READ, len(keys)))
            first, last = offsets[rows[0]], offsets[rows[-1] + 1]
            local = offsets[rows[0] : rows[-1] + 2] - first
            yield sequence_table(
                np.full(len(rows), unit), rows, keys[rows], local, items[first:last]
            )


def ray_blocks(data_dir: Path, seed: int):
    """The same sequences through Ray Data's training stream (its read tasks, one block per
    work unit), as the worker's `iter_batches` receives them."""
    board = start_board()
    ray.get(board.start.remote(DataPosition().state_dict(), 0))
    stream = training_stream(data_dir, 1000, seed, board)
    return stream.iter_batches(batch_size=SEQUENCES_PER_READ, batch_format="pyarrow")


def measure(name: str, seconds: float, run_dir: Path, overrides: list[str], on_ray: bool) -> None:
    files = [] if name == "default" else [str(PRESETS / f"{name}.yaml")]
    cfg = load_config(files, [f"run_dir={run_dir / name}", *overrides])
    data_dir = prepare(cfg)
    items = load_manifest(data_dir)["num_items"]
    ids = dedup_codes(np.random.default_rng(0).integers(0, CODES, (items, LEVELS)))
    table = run_dir / name / "semantic_ids.parquet"
    pq.write_table(id_table(ids, "item"), table)
    codes = ItemCodes.load([table], items, CODES)
    stream = stream_batches(
        ray_blocks(data_dir, cfg.seed) if on_ray else blocks(data_dir),
        PositionTracker(),
        cfg.data.max_history,
        batch_plan(cfg.trainer, 1)[0],
        cfg.trainer.shuffle_buffer,
        np.random.default_rng(0),
        stride=window_stride(cfg),
    )
    targets = batches = 0
    coding = 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        rows = next(stream)
        begun = time.perf_counter()
        Batch.coded(rows, codes, torch.device("cpu"))
        coding += time.perf_counter() - begun
        targets, batches = targets + targets_in(rows), batches + 1
    wall = time.perf_counter() - started
    print(
        f"{name}{' through Ray Data' if on_ray else ''}: {targets / wall:,.0f} targets/s, "
        f"{batches / wall:.1f} batches/s of "
        f"{batch_plan(cfg.trainer, 1)[0]} ({cfg.trainer.model.encoder} encoder), "
        f"{100 * coding / wall:.0f}% of the time in the code lookup"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "datasets", nargs="*", default=["default", "amazon14_beauty", "synthetic_long"]
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--set", nargs="*", default=[], help="key=value config overrides")
    parser.add_argument("--ray", action="store_true", help="read through Ray Data's stream")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker's share of a core, as under Ray Train here
    run_dir = Path(tempfile.mkdtemp(prefix="genrec-bench-stream-"))
    with ray_session(load_config([], []).cluster) if args.ray else nullcontext():
        for name in args.datasets:
            measure(name, args.seconds, run_dir, args.set, args.ray)
    print(f"command: python benchmarks/stream_throughput.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
