"""LightGCN at large graphs: what a training step costs, and what an epoch costs by batch size.

Command:
    python benchmarks/lightgcn_scale.py [--users 1000000] [--items 1000000]
        [--batches 2048 65536 262144] [--steps 3]

Prepares a synthetic log (genrec prepare; --users users, --items items before the 5-core
filter), builds LightGCN's trainer (default settings: 64 dimensions, 3 layers) and times:
- the 3-layer propagation, forward and backward, over the CSR graph with genrec's symmetric
  backward (`Propagation`) against torch's COO `sparse.mm` (what genrec used before);
- --steps optimizer steps at each batch size (every step propagates the whole graph), and the
  epoch that batch size implies (edges / batch steps).
Prints each figure, the peak RSS of the process and the command.
"""

import argparse
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sasrec_scale import prepared

from genrec.cf.lightgcn import LightGCNTrainer, normalized_adjacency
from genrec.config import load_config
from genrec.data_pipeline.prepared import load_prepared


def propagation_seconds(trainer: LightGCNTrainer, graph: torch.Tensor, repeats: int) -> float:
    """Forward and backward of the model's propagation over `graph`, seconds each."""
    trainer.model.zero_grad()
    started = time.perf_counter()
    for _ in range(repeats):
        users, items = trainer.model(graph)
        (users.sum() + items.sum()).backward()
    return (time.perf_counter() - started) / repeats


def coo_propagation_seconds(trainer: LightGCNTrainer, repeats: int) -> float:
    """The same with torch.sparse.mm over the COO graph (autograd transposes it)."""
    graph = normalized_adjacency(
        trainer.users, trainer.positives, trainer.num_users, trainer.num_items
    )
    model = trainer.model
    started = time.perf_counter()
    for _ in range(repeats):
        x = torch.cat([model.users.weight, model.items.weight])
        total = x
        for _ in range(model.layers):
            x = torch.sparse.mm(graph, x)
            total = total + x
        total.sum().backward()
    return (time.perf_counter() - started) / repeats


def step_seconds(trainer: LightGCNTrainer, batch: int, steps: int) -> float:
    """Optimizer steps on `batch` edges each (the trainer's own epoch over a slice)."""
    edges = trainer.edges
    trainer.edges = edges[: batch * steps]  # an epoch of `steps` batches
    trainer.users, trainer.positives = np.divmod(trainer.edges, trainer.num_items)
    trainer.cfg.batch_size = batch
    started = time.perf_counter()
    trainer.train_epoch()
    seconds = (time.perf_counter() - started) / steps
    trainer.edges = edges
    trainer.users, trainer.positives = np.divmod(edges, trainer.num_items)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[2048, 65536, 262144])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="genrec-lightgcn-"))
    started = time.perf_counter()
    data = load_prepared(prepared(args.items, args.users, folder))
    print(f"prepared in {time.perf_counter() - started:.0f} s")
    cfg = load_config([]).lightgcn
    started = time.perf_counter()
    torch.manual_seed(0)
    trainer = LightGCNTrainer(data, cfg, np.random.default_rng(0))
    print(
        f"{data.num_users:,} users, {data.num_items:,} items, {trainer.edges.size:,} edges; "
        f"trainer built in {time.perf_counter() - started:.1f} s, {torch.get_num_threads()} "
        "torch threads"
    )
    csr = propagation_seconds(trainer, trainer.graph, args.steps)
    coo = coo_propagation_seconds(trainer, args.steps)
    print(f"propagation forward+backward: CSR {csr:.2f} s, COO {coo:.2f} s ({csr / coo:.2f}x)")
    for batch in args.batches:
        seconds = step_seconds(trainer, batch, args.steps)
        epoch = math.ceil(trainer.edges.size / batch) * seconds
        print(f"batch {batch:>7,}: {seconds:.2f} s a step, an epoch {epoch / 60:.1f} min")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.2f} GiB")
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
