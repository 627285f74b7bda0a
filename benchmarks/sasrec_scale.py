"""SASRec's training step at large catalogues: the full softmax against the sampled losses.

Command:
    python benchmarks/sasrec_scale.py [--items 100000 1000000] [--users 400000]
        [--losses ce sampled in_batch] [--steps 20] [--min-item-interactions 5]

For each catalogue size, prepares a synthetic log (genrec prepare) and, for each loss, in a
process of its own (so that its peak RSS is its own), builds SASRec's trainer (default
settings: hidden 64, batch 128 users, max_len 50) and times --steps optimizer steps on the
longest batches (the worst case: the most positions, so the largest logits). The full
softmax is skipped where its logits alone would not fit in half this machine's memory.
Prints seconds per step and peak RSS.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from genrec.cf.sasrec import SASRecTrainer
from genrec.config import load_config
from genrec.data_pipeline.prepare import load_manifest, prepare
from genrec.data_pipeline.prepared import load_prepared


def prepared(items: int, users: int, folder: Path, min_item_interactions: int = 5) -> Path:
    cfg = load_config(
        [],
        [
            f"run_dir={folder}",
            f"data.synthetic.num_users={users}",
            f"data.synthetic.num_items={items}",
            f"data.min_item_interactions={min_item_interactions}",
        ],
    )
    return prepare(cfg)


def one_run(data_dir: str, loss: str, steps: int) -> dict:
    """Runs in its own process: `steps` steps on the longest batches; time and peak RSS."""
    cfg = load_config([], [f"sasrec.loss={loss}"]).sasrec
    trainer = SASRecTrainer(load_prepared(Path(data_dir)), cfg, np.random.default_rng(0))
    longest = sorted(trainer.batches(), key=lambda rows: -int(trainer.lengths[rows].sum()))
    trainer.step(longest[0])  # warm-up
    started = time.perf_counter()
    for rows in longest[1 : steps + 1]:
        trainer.step(rows)
    seconds = (time.perf_counter() - started) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds_per_step": seconds, "peak_rss_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=400_000)
    parser.add_argument("--losses", nargs="+", default=["ce", "sampled", "in_batch"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--min-item-interactions",
        type=int,
        default=5,
        help="the k-core's item side (1 keeps every item drawn: the 5-core leaves ~10^5 items)",
    )
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # DATA_DIR LOSS STEPS
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one[0], args.one[1], int(args.one[2]))))
        return
    memory = psutil.virtual_memory().total
    for items in args.items:
        folder = Path(tempfile.mkdtemp(prefix="genrec-sasrec-"))
        data_dir = prepared(items, args.users, folder, args.min_item_interactions)
        manifest = load_manifest(data_dir)
        print(
            f"{manifest['num_items']:,} items, {manifest['num_users']:,} users, "
            f"{manifest['num_interactions']:,} interactions"
        )
        for loss in args.losses:
            logits = 128 * 50 * manifest["num_items"] * 4 * 3  # logits, softmax, gradient
            if loss == "ce" and logits > memory / 2:
                print(f"  {loss:>8}: skipped, its logits alone need {logits / 2**30:.0f} GiB")
                continue
            command = [sys.executable, __file__, "--one", str(data_dir), loss, str(args.steps)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"  {loss:>8}: {result['seconds_per_step']:.2f} s a step, "
                f"peak RSS {result['peak_rss_gib']:.2f} GiB"
            )
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
