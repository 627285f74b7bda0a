"""Training samples/s: genrec's model vs Hugging Face T5ForConditionalGeneration, same dims.

Command:
    python benchmarks/train_throughput.py [--preset small] [--batch 256] [--history 20]
        [--warmup 1] [--steps 2] [--rounds 3] [--threads N]

Both models train (AdamW, forward + backward + step) on the same random batches of valid
semantic-ID histories. The two alternate for several rounds so that both see the same machine
state (other load, caches, clocks); the ratio genrec / HF is the figure to watch (goal >= 1.5x
on CPU). The ceiling line says how far it can go here: each model's matmul FLOPs per sample,
and the FLOP/s of the model's feed-forward matmul timed alone, give the samples/s of a model
whose every matmul ran that fast, i.e. the largest ratio any implementation could reach.

On a machine shared with other jobs, pass --threads 1: torch's default of one thread per core
then fights the other load and small ops stall (seen here: 7 s instead of 0.4 s per step).
"""

import argparse
import sys
import time
from collections.abc import Callable

import hf_t5
import numpy as np
import torch

from genrec.trainer.model import GenerativeRecommender, ModelConfig


def timed_steps(step: Callable[[dict], None], batches: list[dict]) -> float:
    """Seconds to run one optimiser step per batch."""
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return time.perf_counter() - start


def trainer(model: torch.nn.Module, loss: Callable[[dict], torch.Tensor]) -> Callable:
    """A closure doing forward + backward + AdamW step on one batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(batch: dict) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(batch).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--history", type=int, default=20, help="history items per user")
    parser.add_argument("--items", type=int, default=10_000, help="catalogue size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's own")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    config = ModelConfig.preset(args.preset, max_history_items=args.history)
    codes = hf_t5.item_codes(config, args.items, rng)
    batches = []
    for _ in range(args.steps):
        history = hf_t5.random_histories(codes, args.batch, args.history, rng)
        target = torch.from_numpy(codes[rng.integers(0, len(codes), args.batch)])
        hf_inputs = hf_t5.t5_inputs(config, history, target)
        batches.append({"genrec": (history, target), "hf": hf_inputs})

    genrec = GenerativeRecommender(config)
    hf = hf_t5.build_t5(config)
    models = {
        "genrec": (genrec, trainer(genrec, lambda b: genrec.loss(*b["genrec"]))),
        "HF T5": (hf, trainer(hf, lambda b: hf(**b["hf"]).loss)),
    }
    for _, step in models.values():
        timed_steps(step, [batches[i % len(batches)] for i in range(args.warmup)])
    seconds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (_, step) in models.items():
            seconds[name].append(timed_steps(step, batches))

    samples = args.steps * args.batch
    rate = {name: samples * len(s) / sum(s) for name, s in seconds.items()}
    print("command: python " + " ".join(sys.argv))
    print(hf_t5.hardware())
    print(
        f"preset {args.preset}, batch {args.batch}, history {args.history} items "
        f"({args.history * config.codes_per_item} tokens), {args.rounds} rounds x {args.steps} "
        f"timed steps after {args.warmup} warm-up steps"
    )
    print(f"{'model':8} {'params':>11} {'samples/s':>10} {'per round':>24}")
    for name, (model, _) in models.items():
        params = sum(p.numel() for p in model.parameters())
        rounds = " ".join(f"{samples / s:.0f}" for s in seconds[name])
        print(f"{name:8} {params:11,d} {rate[name]:10.1f} {rounds:>24}")
    print(f"ratio genrec / HF: {rate['genrec'] / rate['HF T5']:.2f}x (goal >= 1.5x on CPU)")

    flops = {
        name: hf_t5.matmul_flops(lambda step=step: step(batches[0])) / args.batch
        for name, (_, step) in models.items()
    }
    for name, per_sample in flops.items():
        print(
            f"{name}: {per_sample / 1e9:.3f} matmul GFLOP per sample, "
            f"{per_sample * rate[name] / 1e9:.1f} GFLOP/s"
        )
    rows = args.batch * args.history * config.codes_per_item
    ceiling = hf_t5.matmul_rate(rows, config.d_model, config.d_ff, backward=True)
    best = ceiling / flops["genrec"]
    print(
        f"ceiling: the feed-forward matmul [{rows} x {config.d_model}] x "
        f"[{config.d_model} x {config.d_ff}] with its backward runs at {ceiling / 1e9:.1f} "
        f"GFLOP/s; at that rate throughout, genrec would train {best:.1f} samples/s, "
        f"{best / rate['HF T5']:.2f}x HF"
    )


if __name__ == "__main__":
    main()
