"""Retrieval users/s over a large catalogue: exact chunked top-k against the HNSW index.

Command:
    python benchmarks/retrieval.py [--items 1000000] [--dim 64] [--users 2048] [--k 10]

Synthetic clustered item vectors (as collaborative embeddings are), queries near random items.
Prints users/s of `ExactIndex` (the whole catalogue scored, block by block, on this device)
and of the faiss HNSW index (after its build time), with the index's top-k recall against the
exact lists.
"""

import argparse
import time

import numpy as np
import torch

from genrec.trainer.retrieval import ApproximateIndex, ExactIndex, recall_against_exact


def clustered(items: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(items // 1000, 1), dim))
    labels = rng.integers(len(centres), size=items)
    return (centres[labels] + 0.5 * rng.normal(size=(items, dim))).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--users", type=int, default=2048)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    items = clustered(args.items, args.dim, seed=0)
    rng = np.random.default_rng(1)
    queries = torch.from_numpy(items[rng.choice(args.items, args.users, replace=False)])
    queries += 0.1 * torch.randn_like(queries)
    vectors = torch.from_numpy(items)

    started = time.perf_counter()
    _, exact = ExactIndex(vectors).search(queries, args.k)
    exact_seconds = time.perf_counter() - started

    started = time.perf_counter()
    index = ApproximateIndex(items)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    _, found = index.search(queries, args.k)
    search_seconds = time.perf_counter() - started

    print(
        f"{args.items:,} items x {args.dim} dims, {args.users:,} users, top-{args.k}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"exact (blocks of 2^17 items): {args.users / exact_seconds:,.0f} users/s")
    print(
        f"HNSW (build {build_seconds:.1f} s): {args.users / search_seconds:,.0f} users/s, "
        f"recall@{args.k} against exact {recall_against_exact(found, exact):.4f}"
    )
    print(
        f"command: python benchmarks/retrieval.py --items {args.items} --dim {args.dim} "
        f"--users {args.users} --k {args.k}"
    )


if __name__ == "__main__":
    main()
