"""The re-tokenizing actor pool: items/s with 1 and 2 actors, M kept checkpoints, and memory.

Command:
    python benchmarks/retokenize_pool.py [--items 1000000] [--dim 64] [--tables 10]
        [--block 16384]

Fits a small RQ-VAE (the default tokenizer's shape) on a sample of synthetic item vectors,
keeps its last M epochs, then codes all --items vectors with every checkpoint: once serially
in this process (the reference) and by the Ray Data actor pool with 1 and 2 actors of one CPU
each, on a local Ray instance. Prints items/s (items x checkpoints coded per second is M times
it), the driver's peak RSS and each actor's, and checks that the pool's tables equal the serial
ones.
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from process_memory import PeakMemory

from genrec.cluster.retokenize import pool_codes
from genrec.config import load_config
from genrec.tokenizers.tables import kept_checkpoints, serial_codes
from genrec.tokenizers.tokenize import fit_and_tokenize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--tables", type=int, default=10)
    parser.add_argument("--block", type=int, default=16384)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(512, args.dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 512, args.items)] + rng.normal(
        scale=0.3, size=(args.items, args.dim)
    ).astype(np.float32)
    np.save(folder / "items.npy", vectors)
    cfg = load_config(
        [],
        [
            f"run_dir={folder}",
            "tokenizer.epochs=12",
            "tokenizer.codebook_size=256",  # the default shape (no data stage sizes it here)
            f"tokenizer.keep_epochs={args.tables}",
            f"tokenizer.tables={args.tables}",
            f"cluster.retokenize_block={args.block}",
        ],
    )
    fit_and_tokenize(cfg, vectors[:20000], None, folder / "items", "item")
    checkpoints = kept_checkpoints(folder / "items" / "checkpoints", args.tables)
    started = time.perf_counter()
    serial, _ = serial_codes(checkpoints, vectors, cfg.tokenizer, args.block)
    seconds = time.perf_counter() - started
    print(f"serial    : {args.items / seconds:>10,.0f} items/s ({seconds:.1f} s)")
    driver_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    for actors in (1, 2):
        cfg.cluster.retokenize_actors = actors
        sampler = PeakMemory("MapWorker")
        sampler.start()
        started = time.perf_counter()
        codes, _ = pool_codes(checkpoints, folder / "items.npy", 0, args.items, cfg)
        seconds = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        assert np.array_equal(codes, serial), "the pool's codes differ from the serial ones"
        print(
            f"{actors} actor(s): {args.items / seconds:>10,.0f} items/s ({seconds:.1f} s), "
            f"peak RSS per actor {sampler.peak:,.0f} MiB"
        )
    print(f"driver peak RSS {driver_rss:,.0f} MiB (the vectors: {vectors.nbytes / 2**20:,.0f} MiB)")
    print(
        f"M = {args.tables} checkpoints, {args.items:,} x {args.dim}-d vectors, "
        f"blocks of {args.block}; pool equals serial: yes"
    )


if __name__ == "__main__":
    main()
