"""The GPU suite: bf16 training samples/s and MFU of each size preset, beam-search users/s, and
a paper-size quality run (the small preset on Beauty, as many epochs as the budget holds).

Command (what benchmarks/gpu.sh runs; --tiny is the CPU check of the script itself):
    python benchmarks/gpu_suite.py --out gpu.json [--tiny] [--budget-s 480]

Writes one JSON file and prints it. Throughput trains each preset (AdamW, forward + backward +
step, bf16 autocast on a GPU) on random valid semantic-ID histories; MFU is the model's own
FLOP count (`flops_per_example`) against the device's dense bf16 peak.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import hf_t5
import numpy as np
import torch

from genrec.trainer.beam_search import beam_search
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.train import peak_flops
from genrec.trainer.trie import ItemTrie

BEAUTY = "configs/datasets/amazon14_beauty.yaml"
# The CPU check: tiny data and model, one epoch.
TINY_RUN = [
    "data.synthetic.num_users=300",
    "data.synthetic.num_items=90",
    "tokenizer.epochs=3",
    "tokenizer.codebook_size=16",
    "sasrec.epochs=1",
    "trainer.epochs=1",
]


def throughput(
    preset: str, device: torch.device, batch: int, history: int, seconds: float, items: int
) -> dict:
    """Training samples/s of one preset for about `seconds`, after 3 warm-up steps."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = ModelConfig.preset(preset, max_history_items=history)
    codes = hf_t5.item_codes(config, items, rng)
    inputs = hf_t5.random_histories(codes, batch, history, rng).to(device)
    target = torch.from_numpy(codes[rng.integers(0, items, batch)]).to(device)
    model = GenerativeRecommender(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model.loss(inputs, target)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    sync(device)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 2:
        step()
        steps += 1
    sync(device)
    rate = steps * batch / (time.perf_counter() - start)
    peak = peak_flops(device)
    flops = model.flops_per_example(history)
    return {
        "preset": preset,
        "parameters": model.num_parameters(),
        "batch": batch,
        "history_items": history,
        "samples_per_s": round(rate, 1),
        "mfu": None if peak is None else round(rate * flops / peak, 4),
        "flops_per_sample": flops,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def beam_rate(device: torch.device, users: int, items: int, preset: str) -> dict:
    """Beam-search (B = 20) users/s of a fresh model over a trie of random valid IDs."""
    rng = np.random.default_rng(0)
    config = ModelConfig.preset(preset, max_history_items=20)
    codes = hf_t5.item_codes(config, items, rng)
    history = hf_t5.random_histories(codes, users, 20, rng).to(device)
    model = GenerativeRecommender(config).to(device).eval()
    trie = ItemTrie.from_codes(codes)
    with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        beam_search(model, trie, history[:8], 20)
        sync(device)
        start = time.perf_counter()
        for first in range(0, users, 256):
            beam_search(model, trie, history[first : first + 256], 20)
        sync(device)
    seconds = time.perf_counter() - start
    return {
        "preset": preset,
        "items": items,
        "users": users,
        "beam": 20,
        "users_per_s": round(users / seconds, 1),
    }


def quality(run_dir: Path, tiny: bool, seconds_left: float, rate: float, gpu: bool) -> dict:
    """`genrec run` on Beauty with the small preset (tiny: the synthetic data), as many epochs
    as a third of the remaining time holds at the measured training rate."""
    base = [] if tiny else [BEAUTY, "trainer.model.preset=small", "evaluate.valid_users=2000"]
    base += TINY_RUN if tiny else []
    base += [f"run_dir={run_dir}", f"cluster.use_gpu={str(gpu).lower()}"]
    genrec = [sys.executable, "-m", "genrec"]
    subprocess.run([*genrec, "prepare", *base], check=True)
    examples = json.loads((run_dir / "data" / "manifest.json").read_text())["num_train_examples"]
    epochs = 1 if tiny else max(1, int(seconds_left / 3 * rate / examples))
    start = time.perf_counter()
    subprocess.run([*genrec, "run", *base, f"trainer.epochs={epochs}"], check=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "dataset": "synthetic (tiny)" if tiny else BEAUTY,
        "epochs": epochs,
        "seconds": round(time.perf_counter() - start, 1),
        "test": metrics["test"],
        "baselines": {name: b["test"] for name, b in metrics["baselines"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--tiny", action="store_true", help="a quick CPU check of the script")
    parser.add_argument("--budget-s", type=float, default=480.0, help="the whole suite's time")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/gpu-beauty"))
    args = parser.parse_args()
    started = time.perf_counter()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    presets = ["tiny"] if args.tiny else ["tiny", "small", "base", "large"]
    seconds = 1.0 if args.tiny else 8.0
    report = {
        "command": "python " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "torch": torch.__version__,
        "precision": "bf16 autocast" if gpu else "fp32",
        "train": [
            throughput(p, device, 32 if args.tiny else 256, 20, seconds, 2_000) for p in presets
        ],
        "beam_search": beam_rate(
            device,
            64 if args.tiny else 4096,
            2_000 if args.tiny else 12_000,
            "tiny" if args.tiny else "small",
        ),
    }
    small = report["train"][0 if args.tiny else 1]["samples_per_s"]
    left = args.budget_s - (time.perf_counter() - started)
    report["quality"] = quality(args.run_dir, args.tiny, left, small, gpu)
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
