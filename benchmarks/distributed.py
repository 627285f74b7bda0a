"""Distributed training on Ray Train + DeepSpeed: worker scaling and ZeRO memory per rank.

Command:
    python benchmarks/distributed.py [key=value ...] [--root runs/bench-distributed]
        [--workers 1 2] [--memory-preset base]

1. Throughput: `genrec train` on the built-in synthetic data (one epoch, validation only at
   the end) with each worker count in --workers; samples/s is measured inside the loop
   (forward, backward, optimizer step, gradient all-reduce), excluding start-up. The global
   batch is the same for every worker count. cluster.threads_per_worker=1 measures how the
   workers scale at a fixed per-worker compute (by default workers share the cores).
2. Memory: on 2 workers, the parameters and optimizer state each rank holds after one
   optimizer step of the --memory-preset model (base: 101 M parameters), per ZeRO stage.

Prints a Markdown table per part and writes every figure to --root/distributed.json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import ray
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from genrec import stages
from genrec.config import load_config
from genrec.provenance import code_version, write_json

MIB = 2**20


def throughput(root: Path, workers: int, overrides: list[str]) -> dict:
    cfg = load_config(
        [],
        [
            f"run_dir={root / 'throughput'}",
            "trainer.epochs=1",
            "trainer.eval_every=1000000",
            "trainer.micro_batch_size=128",
            f"cluster.num_workers={workers}",
            *overrides,
        ],
    )
    started = time.perf_counter()
    summary = json.loads((stages.train(cfg) / "train.json").read_text())
    return {
        "workers": workers,
        "samples_per_s": summary["train_samples_per_s"],
        "steps": summary["steps"],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t.numel() and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def measure_memory(job: dict) -> None:
    """On each rank: one optimizer step per ZeRO stage, then the bytes this rank holds."""
    from genrec.trainer.engine import build_engine
    from genrec.trainer.model import GenerativeRecommender, ModelConfig

    config = ModelConfig.preset(job["preset"], num_levels=3, codebook_size=256, dedup_size=8)
    results = {}
    for stage in (0, 1, 2, 3):
        trainer = load_config(
            [],
            [f"trainer.zero_stage={stage}", "trainer.batch_size=4", "trainer.micro_batch_size=2"],
        ).trainer
        torch.manual_seed(0)
        model = GenerativeRecommender(config)
        engine = build_engine(model, trainer, 10, torch.device("cpu"))
        history = torch.randint(0, 8, (2, 5, config.codes_per_item))
        target = torch.randint(0, 8, (2, config.codes_per_item))
        loss = engine(history, target, None).float().logsumexp(-1).mean()
        engine.backward(loss)
        engine.step()
        params = [getattr(p, "ds_tensor", p) for p in engine.module.parameters()]
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        state = [t for s in inner.state.values() for t in s.values() if torch.is_tensor(t)]
        masters = [p for g in inner.param_groups for p in g["params"]]
        results[stage] = {
            "parameters_mib": unique_bytes(params) / MIB,
            "optimizer_mib": (unique_bytes(params + masters + state) - unique_bytes(params)) / MIB,
            "model_parameters": model.num_parameters(),
        }
        del engine, model
    ray.train.report({"rank": ray.train.get_context().get_world_rank(), "memory": results})
    if ray.train.get_context().get_world_rank() == 0:
        Path(job["out"]).write_text(json.dumps(results))


def memory(root: Path, preset: str) -> dict:
    out = (root / "memory.json").absolute()
    root.mkdir(parents=True, exist_ok=True)
    ray.init(include_dashboard=True, ignore_reinit_error=True)
    try:
        TorchTrainer(
            measure_memory,
            train_loop_config={"preset": preset, "out": str(out)},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=2),
            run_config=RunConfig(name="memory", storage_path=str((root / "ray").absolute())),
        ).fit()
    finally:
        ray.shutdown()
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="key=value for the throughput runs")
    parser.add_argument("--root", type=Path, default=Path("runs/bench-distributed"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--memory-preset", default="base")
    args = parser.parse_args()
    runs = [throughput(args.root, n, args.overrides) for n in args.workers]
    lines = ["| workers | samples/s | steps | wall s |", "|---|---|---|---|"]
    lines += [
        f"| {r['workers']} | {r['samples_per_s']} | {r['steps']} | {r['wall_s']} |" for r in runs
    ]
    ratio = runs[-1]["samples_per_s"] / runs[0]["samples_per_s"]
    lines.append(f"\n{runs[-1]['workers']} vs {runs[0]['workers']} workers: {ratio:.2f}x")
    mem = memory(args.root, args.memory_preset)
    count = mem["0"]["model_parameters"]
    lines += [
        f"\nper-rank memory, 2 workers, preset {args.memory_preset} ({count:,} parameters), fp32:",
        "| ZeRO stage | parameters MiB | optimizer MiB | total MiB |",
        "|---|---|---|---|",
    ]
    for stage, m in mem.items():
        total = m["parameters_mib"] + m["optimizer_mib"]
        lines.append(
            f"| {stage} | {m['parameters_mib']:.0f} | {m['optimizer_mib']:.0f} | {total:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    print("\ncommand: python " + " ".join(sys.argv))
    write_json(
        args.root / "distributed.json",
        {
            "throughput": runs,
            "ratio": ratio,
            "memory": mem,
            "argv": sys.argv,
            "code": code_version(),
        },
    )


if __name__ == "__main__":
    main()
