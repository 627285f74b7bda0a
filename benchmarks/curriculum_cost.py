"""MTGRec's curriculum: the cost of one stage's influence estimate as a share of one training
epoch, subsampled (genrec's default) against the full-pass estimate (every training example
in every group, every validation example: what the official code does), and the error of the
subsampled estimate against the full one.

Command:
    python benchmarks/curriculum_cost.py [--tables 3] [--steps 100]
        [--sizes 128:256 192:768 512:1024] [--run-dir runs/bench-curriculum] [key=value ...]

On the built-in synthetic data (or the dataset the overrides name): one process, one DeepSpeed
rank. The model first trains --steps optimizer steps with groups drawn uniformly (so the
weights and Adam moments are those of a run in progress); then both estimates score the groups
from the same state. Epoch time is the examples per epoch over the measured training rate.
"""

import argparse
import time

import numpy as np
import torch
from scipy import stats

from genrec import stages
from genrec.config import load_config
from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.streaming import TrainExamples, collate
from genrec.methods import method_spec
from genrec.trainer.curriculum import Curriculum
from genrec.trainer.engine import full_state_dict
from genrec.trainer.influence import group_weights
from genrec.trainer.train import Loop


def estimate(loop: Loop, data_dir, train_examples: int, valid_examples: int):
    settings = loop.cfg.trainer.curriculum
    settings.train_examples, settings.valid_examples = train_examples, valid_examples
    curriculum = Curriculum(loop, data_dir)
    started = time.perf_counter()
    loop.eval_model.load_state_dict(full_state_dict(loop.engine))
    loop.eval_model.eval()
    scores = curriculum.scores(loop)
    return np.array(scores), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--run-dir", default="runs/bench-curriculum")
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["128:256", "192:768", "512:1024"],
        help="train:valid examples",
    )
    args, overrides = parser.parse_known_args()
    cfg = load_config(
        [],
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
    examples = iter(TrainExamples(data_dir, cfg.data.max_history, seed=cfg.seed))
    rng = np.random.default_rng(0)
    started, trained = time.perf_counter(), 0
    for _ in range(args.steps):
        rows = collate([next(examples) for _ in range(cfg.trainer.batch_size)])
        rows["group"] = torch.from_numpy(rng.integers(0, args.tables, len(rows["target"])))
        loop.micro_step(rows)
        trained += len(rows["target"])
    rate = trained / (time.perf_counter() - started)
    manifest = load_manifest(data_dir)
    epoch = manifest["num_train_examples"] / rate
    full, full_s = estimate(
        loop, data_dir, manifest["num_train_examples"], manifest["num_valid_examples"]
    )
    w_full = group_weights([full], [1.0], 1.0)
    print(f"training: {rate:,.0f} examples/s, one epoch {epoch:.1f} s")
    print(f"full-pass estimate: {full_s:.1f} s = {100 * full_s / epoch:.0f}% of an epoch")
    print(f"  scores {np.round(full, 3).tolist()}  weights {np.round(w_full, 3).tolist()}")
    for size in args.sizes:
        train_n, valid_n = map(int, size.split(":"))
        sub, sub_s = estimate(loop, data_dir, train_n, valid_n)
        w_sub = group_weights([sub], [1.0], 1.0)
        print(
            f"subsampled {train_n} train x {args.tables} groups + {valid_n} valid: {sub_s:.2f} s "
            f"= {100 * sub_s / epoch:.1f}% of an epoch; scores {np.round(sub, 3).tolist()} "
            f"weights {np.round(w_sub, 3).tolist()}; largest weight error "
            f"{np.abs(w_sub - w_full).max():.3f}, rank correlation "
            f"{stats.spearmanr(sub, full).statistic:.2f}"
        )


if __name__ == "__main__":
    main()
