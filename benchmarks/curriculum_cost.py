"""MTGRec's curriculum: the cost of one stage's influence estimate as a share of one training
epoch, subsampled (genrec's default) against the full-pass estimate (every training example
in every group, every validation example: what the official code does), and the error of the
subsampled estimate against the full one over several sample seeds: rank agreement, the
scores' spread against their bootstrap noise, and the weights with and without shrinking the
differences by their noise (`trainer.curriculum.noise_z`).

Command:
    python benchmarks/curriculum_cost.py [CONFIG.yaml ...] [--tables 10] [--steps 200]
        [--sizes 128:256 256:512 512:1024] [--seeds 3] [--run-dir runs/bench-curriculum]
        [key=value ...]

On the built-in synthetic data (or the dataset the config files and overrides name): one
process, one DeepSpeed rank. The model first trains --steps optimizer steps on length-grouped
batches (as the training stream makes them) with groups drawn uniformly, so the weights and
Adam moments are those of a run in progress; then every estimate scores the groups from that
same state. Epoch time is the examples per epoch over the measured training rate.
"""

import argparse
import itertools
import time

import numpy as np
import torch
from scipy import stats

from genrec import stages
from genrec.config import load_config
from genrec.data_pipeline.example_arrays import (
    Sequences,
    collated,
    cut_prefixes,
    length_grouped,
    pools,
)
from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.streaming import TrainExamples
from genrec.methods import method_spec
from genrec.methods.mtgrec.curriculum import Curriculum
from genrec.methods.mtgrec.influence import group_weights
from genrec.trainer.engine import full_state_dict
from genrec.trainer.train import Loop


def estimate(loop: Loop, train_examples: int, valid_examples: int, seed: int):
    """(scores, their bootstrap noise, seconds) of one stage's estimate from the loop's state."""
    settings = loop.cfg.trainer.curriculum
    settings.train_examples, settings.valid_examples = train_examples, valid_examples
    loop.cfg.seed = seed
    curriculum = Curriculum(loop.cfg, loop.codes.num_groups)
    curriculum.attach(loop)
    started = time.perf_counter()
    loop.eval_model.load_state_dict(full_state_dict(loop.engine))
    loop.eval_model.eval()
    scores, noise = curriculum.scores()
    return np.array(scores), np.array(noise), time.perf_counter() - started


def train_rate(loop: Loop, data_dir, steps: int, groups: int) -> float:
    """Examples/s of `steps` optimizer steps on length-grouped batches (the first 10 unmeasured)."""
    cfg = loop.cfg
    users, seqs = zip(*TrainExamples(data_dir, cfg.data.max_history).sequences(), strict=True)
    user = np.array(users)
    examples = cut_prefixes(Sequences.of_lists(list(seqs), user), cfg.data.max_history, 0)
    rng = np.random.default_rng(0)
    pool_targets = cfg.trainer.batch_size * 16
    batches = (
        batch
        for held, pool in pools(itertools.repeat(examples), pool_targets, pool_targets, rng)
        for batch in length_grouped(held, pool, cfg.trainer.batch_size, rng)
    )
    trained, started = 0, time.perf_counter()
    for step in range(steps + 10):
        if step == 10:
            trained, started = 0, time.perf_counter()
        rows = collated(next(batches))
        rows["group"] = torch.from_numpy(rng.integers(0, groups, len(rows["target"])))
        loop.micro_step(rows)
        trained += len(rows["target"])
    return trained / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--run-dir", default="runs/bench-curriculum")
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["128:256", "256:512", "512:1024"],
        help="train:valid examples",
    )
    args, rest = parser.parse_known_args()
    files = [arg for arg in rest if arg.endswith((".yaml", ".yml"))]
    overrides = [arg for arg in rest if arg not in files]
    cfg = load_config(
        files,
        [
            "method=mtgrec",
            f"run_dir={args.run_dir}",
            f"tokenizer.tables={args.tables}",
            "finetune.candidates=[0]",
            *overrides,
        ],
    )
    data_dir, tables = stages.data(cfg), stages.id_tables(cfg)
    loop = Loop(cfg, data_dir, tables, "bench", method_spec("mtgrec"))
    rate = train_rate(loop, data_dir, args.steps, args.tables)
    manifest = load_manifest(data_dir)
    epoch = manifest["num_train_examples"] / rate
    print(f"training: {rate:,.0f} examples/s, one epoch {epoch:.1f} s ({args.tables} groups)")
    settings = cfg.trainer.curriculum
    tau, z = settings.tau, settings.noise_z

    def weights(scores: np.ndarray, noise: np.ndarray, shrink: float) -> np.ndarray:
        return group_weights([scores.tolist()], [1.0], tau, [noise.tolist()], shrink)

    full, full_noise, full_s = estimate(
        loop, manifest["num_train_examples"], manifest["num_valid_examples"], 0
    )
    w_full = weights(full, full_noise, 0.0)
    print(f"full-pass estimate: {full_s:.1f} s = {100 * full_s / epoch:.0f}% of an epoch")
    print(f"  scores {np.round(full, 4).tolist()}")
    print(f"  noise  {np.round(full_noise, 4).tolist()}")
    print(f"  weights (tau {tau}, raw) {np.round(w_full, 3).tolist()}")
    print(
        "| train x groups + valid | wall | share of an epoch | score spread / noise | "
        f"rank vs full | weight error, raw | weight error, noise_z {z} | max weight, noise_z {z} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        train_n, valid_n = map(int, size.split(":"))
        walls, ranks, ratio, raw, shrunk, top = [], [], [], [], [], []
        for seed in range(args.seeds):
            sub, noise, sub_s = estimate(loop, train_n, valid_n, seed)
            walls.append(sub_s)
            ranks.append(stats.spearmanr(sub, full).statistic)
            ratio.append(np.std(sub - sub.mean()) / np.mean(noise))
            raw.append(np.abs(weights(sub, noise, 0.0) - w_full).max())
            kept = weights(sub, noise, z)
            shrunk.append(np.abs(kept - w_full).max())
            top.append(kept.max())
        print(
            f"| {train_n} x {args.tables} + {valid_n} | {np.mean(walls):.2f} s | "
            f"{100 * np.mean(walls) / epoch:.1f}% | {np.mean(ratio):.2f} | "
            f"{np.mean(ranks):.2f} (min {np.min(ranks):.2f}) | {np.mean(raw):.3f} | "
            f"{np.mean(shrunk):.3f} | {np.mean(top):.3f} |"
        )


if __name__ == "__main__":
    main()
