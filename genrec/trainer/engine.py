"""The DeepSpeed engine the training loop drives, single-process or one rank of many.

The optimizer (AdamW) and schedule (linear warm-up, cosine decay) are plain torch objects handed
to DeepSpeed, so the same loop runs on CPU (gloo) and GPU (nccl, bf16) with any ZeRO stage.
"""

import math
import os
import socket

import torch
from omegaconf import DictConfig
from torch import nn

from genrec.errors import ConfigError
from genrec.trainer.config import Precision, batch_plan


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'trainer.device' is {name!r} but no GPU is available")
    return device


def use_bf16(trainer: DictConfig, device: torch.device) -> bool:
    if trainer.precision is Precision.auto:
        return device.type == "cuda"
    return trainer.precision is Precision.bf16


def deepspeed_config(trainer: DictConfig, world_size: int, device: torch.device) -> dict:
    micro, accumulation = batch_plan(trainer, world_size)
    return {
        "train_batch_size": trainer.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": trainer.grad_clip,
        "zero_optimization": {"stage": trainer.zero_stage},
        "bf16": {"enabled": use_bf16(trainer, device)},
        "steps_per_print": 2**31 - 1,
        "zero_allow_untested_optimizer": True,
    }


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """The learning-rate multiplier at optimizer step `step`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; norms' gains are left alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def free_port() -> int:
    """A TCP port no one listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skip_shm_op() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce when it starts (25-40 s
    on 2 cores, once per install and node; it needs a C++ compiler) that only its inference
    kernels call: training reduces through gloo. Marked unavailable, it is never built."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def init_distributed(device: torch.device) -> None:
    """Join the process group the launcher set up, or make a one-process group."""
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        skip_shm_op()
    import deepspeed

    if torch.distributed.is_initialized():
        return
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    backend = "nccl" if device.type == "cuda" else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def build_engine(
    model: nn.Module,
    trainer: DictConfig,
    total_steps: int,
    device: torch.device,
    groups: list[dict] | None = None,
):
    """Wraps the model in a DeepSpeed engine with AdamW and the warm-up + cosine schedule;
    `groups` are the optimizer's parameter groups (default: decay on matrices only)."""
    init_distributed(device)
    import deepspeed

    world_size = torch.distributed.get_world_size()
    optimizer = torch.optim.AdamW(
        groups or param_groups(model, trainer.weight_decay),
        lr=trainer.lr,
        betas=(0.9, 0.98),
        fused=device.type == "cuda",
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(step, trainer.warmup_steps, total_steps, trainer.min_lr_ratio),
    )
    engine, *_ = deepspeed.initialize(
        model=model.to(device),
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=deepspeed_config(trainer, world_size, device),
    )
    return engine


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The whole model's weights on every rank; under ZeRO-3 all ranks must call it together."""
    if engine.zero_optimization_partition_weights():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    return engine.module.state_dict()
