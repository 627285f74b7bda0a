"""Data influence of code groups (MTGRec): how much a training step on group g would lower the
validation loss, to first order.

A group's score is the Adam update direction of its mean training gradient (the step the
optimizer would take, from its current moments) dotted with the validation gradient. Scores
of successive stages are averaged weighted by each stage's learning rate, and the group
weights are softmax(score / tau). Gradients can be randomly projected to a few thousand
dimensions first: dot products survive (Johnson-Lindenstrauss), memory and all-reduce shrink.
"""

from collections.abc import Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from genrec.trainer.objective import Batch, Objective

PROJECTION_CHUNK = 1 << 16


def adam_direction(
    grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, betas: tuple[float, float], eps: float
) -> Tensor:
    """The step Adam would take for `grad` from moments (m, v): m' / (sqrt(v') + eps).
    No bias correction: the moments come from a run many steps old."""
    beta1, beta2 = betas
    m = beta1 * exp_avg + (1 - beta1) * grad
    v = beta2 * exp_avg_sq + (1 - beta2) * grad.square()
    return m / (v.sqrt() + eps)


class Projection:
    """x -> R x / sqrt(k) with R a seeded Gaussian [k, n], generated chunk by chunk of x so
    that R is never held whole; the same seed gives the same R on every rank."""

    def __init__(self, dim: int, seed: int):
        self.dim, self.seed = dim, seed

    def __call__(self, x: Tensor) -> Tensor:
        if self.dim == 0:
            return x
        out = torch.zeros(self.dim, dtype=torch.float64)
        for index, chunk in enumerate(x.double().split(PROJECTION_CHUNK)):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            r = torch.randn(self.dim, chunk.numel(), generator=generator, dtype=torch.float64)
            out += r @ chunk
        return out / self.dim**0.5


def mean_gradient(
    model: nn.Module, objective: Objective, batches: Iterable[Batch], device: torch.device
) -> Tensor:
    """The gradient of the mean loss over every rank's batches, flat, the same on all ranks
    (a collective: every rank calls it, with its own share of the examples)."""
    model.zero_grad(set_to_none=False)
    count = 0
    for batch in batches:
        loss, _ = objective(model, batch)
        (loss * batch.target.numel()).backward()
        count += batch.target.numel()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])
    total = torch.cat([grad.double(), torch.tensor([count], dtype=torch.float64)]).to(device)
    dist.all_reduce(total)
    model.zero_grad(set_to_none=True)
    return (total[:-1] / total[-1].clamp(min=1)).float().cpu()


def group_weights(
    scores: list[list[float]], lrs: list[float], tau: float, normalize: bool = True
) -> np.ndarray:
    """softmax(s / tau) of the stages' scores averaged with their learning rates as weights;
    `normalize` first maps s to [0, 1] (min to max): raw dot products scale with the model and
    the loss, so a fixed tau would make the weights one-hot on one model and flat on another."""
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    lr = np.asarray(lrs, dtype=np.float64)
    mean = (lr[:, None] * np.asarray(scores, dtype=np.float64)).sum(0) / lr.sum()
    if normalize:
        mean = (mean - mean.min()) / max(mean.max() - mean.min(), 1e-12)
    logits = mean / tau
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()
