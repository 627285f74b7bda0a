"""Training examples/s: the bidirectional encoder (an encoder pass per prefix) against the
causal one (every prefix of a window in one pass), on a prepared dataset's real sequences.

Command:
    python benchmarks/causal_speed.py DATA_DIR [--preset tiny] [--batch 256] [--batches 20]
        [--rounds 2] [--stride S] [--threads N]

DATA_DIR is a prepared dataset (a run's `data/` folder). Both modes read the same users'
training sequences, cut as genrec's training stream cuts them (prefix examples, or windows of
up to max_history items; `--stride` defaults to the trainer's, half of max_history), grouped
into batches of `--batch` targets the same way, and train the same model size on them
(forward, backward and an AdamW step; no Ray, no DeepSpeed: the model's own cost). Items get
random semantic IDs (3 x 256 + 64 dedup; the IDs do not change the cost). Each round times
`--batches` batches of each mode after one warm-up batch; examples/s counts trained targets,
and the figure is the median over rounds.
"""

import argparse
import itertools
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from genrec.data_pipeline.example_arrays import sequences_table
from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.ray_ingest import PositionTracker, stream_batches
from genrec.data_pipeline.shards import read_shard
from genrec.data_pipeline.streaming import shard_checksums
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.objective import Batch, CodeGeneration, targets_in


def sequence_blocks(data_dir: Path) -> list[pa.Table]:
    """Every training sequence of the dataset as one block, as Ray Data hands them over."""
    rows = [
        (user, items)
        for path, sha in shard_checksums(data_dir).items()
        for user, items in read_shard(path, sha)
    ]
    return [sequences_table([items for _, items in rows], np.array([user for user, _ in rows]))]


def batches(data_dir: Path, args: argparse.Namespace, stride: int | None) -> list[dict]:
    manifest = load_manifest(data_dir)
    rng = np.random.default_rng(0)
    stream = stream_batches(
        sequence_blocks(data_dir),
        PositionTracker(),
        manifest["max_history"],
        args.batch,
        4096,
        rng,
        stride=stride,
    )
    return list(itertools.islice(stream, args.batches + 1))


def examples_per_second(model, codes: ItemCodes, rows: list[dict]) -> float:
    """Trained targets per second over rows[1:] (rows[0] warms up)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    objective = CodeGeneration()
    model.train()
    started, targets = None, 0
    for index, row in enumerate(rows):
        if index == 1:
            started = time.perf_counter()
        group = {"group": torch.zeros(len(row["user"]), dtype=torch.long)}
        batch = Batch.coded(row | group, codes, "cpu")
        optimizer.zero_grad(set_to_none=True)
        objective(model, batch)[0].backward()
        optimizer.step()
        targets += targets_in(row) if index else 0
    return targets / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stride", type=int, default=0, help="0: half of max_history")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = load_manifest(args.data_dir)
    max_history = manifest["max_history"]
    stride = args.stride or max(1, max_history // 2)
    generator = torch.Generator().manual_seed(0)
    table = torch.cat(
        [
            torch.randint(0, 256, (manifest["num_items"], 3), generator=generator),
            torch.randint(0, 64, (manifest["num_items"], 1), generator=generator),
        ],
        dim=1,
    )
    codes = ItemCodes(table[None], 256)
    modes = {"bidirectional": None, "causal": stride}
    data = {mode: batches(args.data_dir, args, s) for mode, s in modes.items()}
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            torch.manual_seed(0)
            config = ModelConfig.preset(
                args.preset, codebook_size=256, dedup_size=64, max_history_items=max_history
            )
            model = GenerativeRecommender(ModelConfig(**{**vars(config), "encoder": mode}))
            rates[mode].append(examples_per_second(model, codes, data[mode]))
    lengths = [len(items) for block in sequence_blocks(args.data_dir) for items in block["items"]]
    print(
        f"{args.data_dir}: {len(lengths):,} sequences, mean length {np.mean(lengths):.1f}, "
        f"max_history {max_history}, stride {stride}; preset {args.preset}, batch {args.batch} "
        f"targets, {args.batches} batches x {args.rounds} rounds, {torch.get_num_threads()} "
        "threads"
    )
    for mode in modes:
        items = [int((row["history"] >= 0).sum()) for row in data[mode][1:]]
        targets = [targets_in(row) for row in data[mode][1:]]
        print(
            f"{mode}: {statistics.median(rates[mode]):,.0f} examples/s "
            f"(rounds {', '.join(f'{r:,.0f}' for r in rates[mode])}); "
            f"{sum(items) / sum(targets):.1f} history items encoded per target"
        )
    ratio = statistics.median(rates["causal"]) / statistics.median(rates["bidirectional"])
    print(f"causal / bidirectional: {ratio:.1f}x")


if __name__ == "__main__":
    main()
