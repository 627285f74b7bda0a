"""Benchmark `genrec prepare` end to end on a synthetic log.

Command:
    python benchmarks/prepare.py --interactions 10000000
    python benchmarks/prepare.py --interactions 100000000   # optional, ~10x longer

Prints wall time, interactions/s and peak RSS (of this process, which runs the whole pipeline).
"""

import argparse
import resource
import shutil
import sys
import tempfile
import time

from genrec.config import load_config
from genrec.data_pipeline.prepare import load_manifest, prepare


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--mean-length", type=float, default=12.0)
    parser.add_argument("--items-per-interaction", type=float, default=0.01)
    args = parser.parse_args()
    users = int(args.interactions / args.mean_length)
    items = max(int(args.interactions * args.items_per_interaction), 100)
    run_dir = tempfile.mkdtemp(prefix="genrec-bench-prepare-")
    cfg = load_config(
        [],
        [
            f"run_dir={run_dir}",
            f"data.synthetic.num_users={users}",
            f"data.synthetic.num_items={items}",
            f"data.synthetic.mean_length={args.mean_length}",
        ],
    )
    try:
        start = time.perf_counter()
        data_dir = prepare(cfg)
        wall = time.perf_counter() - start
        manifest = load_manifest(data_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    raw = manifest["raw"]["interactions"]
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"command: python benchmarks/prepare.py --interactions {args.interactions}")
    print(f"generated interactions: {raw:,} ({users:,} users, {items:,} items)")
    print(
        f"kept after 5-core: {manifest['num_interactions']:,} interactions, "
        f"{manifest['num_users']:,} users, {manifest['num_items']:,} items, "
        f"{len(manifest['shards'])} shards, {manifest['num_train_examples']:,} train examples"
    )
    print(f"wall time: {wall:.1f} s")
    print(f"throughput: {raw / wall / 1e6:.2f} M interactions/s")
    print(f"peak RSS: {peak_gib:.2f} GiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
