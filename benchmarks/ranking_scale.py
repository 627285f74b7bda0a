"""Evaluation at industrial size: users/s of the ranking actor pool, memory per process, the
popularity baseline at 10^7 users, and the pool's metrics against one process.

Command:
    python benchmarks/ranking_scale.py [--users 1000000] [--items 100000] [--sample 20000]
        [--nodes 2] [--check-users 2000] [--min-item-interactions 5]

1. Prepares a synthetic log of --users users and --items items (genrec prepare) and gives
   the items random semantic IDs (3 x 256 codes and the dedup code) and an untrained tiny
   model: beam search costs the same whatever the weights.
2. Starts a Ray cluster of --nodes local nodes (`ray start --head`, then `ray start
   --address` for each further node; one CPU each) and ranks a seeded sample of --sample
   validation users with `cluster.rank_actors` = 1 and = 2 (the pool spreads its actors over
   the nodes), sampling the RSS of the driver and of every actor.
3. Checks that the pool's metrics equal one process's on --check-users users.
4. Times popularity's ranks for 10^7 users over the catalogue (`count_ranks`).
Prints each figure and this command.
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from local_cluster import local_cluster
from process_memory import PeakMemory

from genrec.cluster.rank_pool import RankPool
from genrec.config import load_config
from genrec.data_pipeline.prepare import load_manifest, prepare
from genrec.data_pipeline.prepared import load_eval_set
from genrec.methods import method_spec
from genrec.metrics import count_ranks, ranking_metrics
from genrec.tokenizers.collisions import dedup_codes
from genrec.tokenizers.tokenize import id_table
from genrec.trainer.checkpoint import save_model
from genrec.trainer.evaluate import LocalRanks, load_ranking_model, table_digests
from genrec.trainer.model import GenerativeRecommender, ModelConfig

LEVELS, CODES = 3, 256


def random_run(folder: Path, args: argparse.Namespace) -> tuple:
    """A prepared synthetic log, random IDs and an untrained tiny model over them."""
    cfg = load_config(
        [],
        [
            f"run_dir={folder}",
            f"data.synthetic.num_users={args.users}",
            f"data.synthetic.num_items={args.items}",
            f"data.min_item_interactions={args.min_item_interactions}",
            "trainer.model.encoder=causal",
        ],
    )
    data_dir = prepare(cfg)
    items = load_manifest(data_dir)["num_items"]
    codes = np.random.default_rng(0).integers(0, CODES, (items, LEVELS))
    ids = dedup_codes(codes)
    table = folder / "semantic_ids.parquet"
    pq.write_table(id_table(ids, "item"), table)
    config = ModelConfig.preset(
        "tiny",
        num_levels=LEVELS,
        codebook_size=CODES,
        dedup_size=int(ids[:, -1].max()) + 1,
        encoder="causal",
        max_history_items=cfg.data.max_history,
    )
    torch.manual_seed(0)
    checkpoint = folder / "model.pt"
    save_model(GenerativeRecommender(config), checkpoint, semantic_ids=table_digests([table]))
    return cfg, data_dir, [table], checkpoint, items


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--check-users", type=int, default=2_000)
    parser.add_argument(
        "--min-item-interactions",
        type=int,
        default=5,
        help="the k-core's item side (1 keeps every item drawn: the 5-core leaves ~10^5 items)",
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="genrec-bench-ranking-"))
    started = time.perf_counter()
    cfg, data_dir, tables, checkpoint, items = random_run(folder, args)
    seconds = time.perf_counter() - started
    print(f"prepared {args.users:,} users x {items:,} items in {seconds:.0f} s")
    valid = load_eval_set(data_dir, "valid")
    sample = valid.subsample(args.sample, 0)
    k = cfg.evaluate.beam_size

    method = method_spec(cfg.method)
    local = LocalRanks(
        load_ranking_model(cfg, method, checkpoint, tables, items, torch.device("cpu")),
        cfg.evaluate.batch_size,
    )
    check = valid.subsample(args.check_users, 1)
    started = time.perf_counter()
    (reference,) = local.ranks([check], k)
    one_process = check.users.size / (time.perf_counter() - started)
    print(f"one process, {torch.get_num_threads()} threads: {one_process:,.0f} users/s")

    with local_cluster(args.nodes, folder):
        print(f"Ray nodes: {len([n for n in ray.nodes() if n['Alive']])}")
        for actors in (1, 2):
            cfg.cluster.rank_actors = actors
            cfg.cluster.threads_per_worker = 1
            pool = RankPool(cfg, checkpoint, tables, items)
            memory = PeakMemory("RankActor")
            memory.start()
            started = time.perf_counter()
            pool.ranks([sample], k)
            seconds = time.perf_counter() - started
            memory.stop.set()
            print(
                f"pool, {actors} actor(s): {sample.users.size / seconds:,.0f} users/s "
                f"({sample.users.size:,} users, {seconds:.0f} s incl. actor start), "
                f"peak actor RSS {memory.peak:,.0f} MiB"
            )
        (pooled,) = pool.ranks([check], k)
        same = ranking_metrics(pooled) == ranking_metrics(reference)
        print(f"pool metrics equal one process's on {check.users.size:,} users: {same}")
    driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"driver peak RSS: {driver:,.0f} MiB")

    counts = np.random.default_rng(0).zipf(1.3, items).clip(max=10**6)
    targets = np.random.default_rng(1).integers(0, items, 10_000_000)
    started = time.perf_counter()
    popularity = ranking_metrics(count_ranks(counts, targets))
    seconds = time.perf_counter() - started
    recall = popularity["recall@10"]
    print(f"popularity, 10^7 users x {items:,} items: {seconds:.1f} s (R@10 {recall:.4f})")
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
