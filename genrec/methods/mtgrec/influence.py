"""Data influence of code groups (MTGRec): how much a training step on group g would lower the
validation loss, to first order.

A group's score is the Adam update direction of its mean training gradient (the step the
optimizer would take, from its current moments) dotted with the validation gradient. Scores
of successive stages are averaged weighted by each stage's learning rate, and the group
weights are softmax(score / tau) of the raw scores (the paper's rule). The samples are taken
in chunks, so the same pass also gives each score's noise (a bootstrap over the chunks), and
differences inside the noise are not amplified into weights. Gradients can be randomly
projected to a few thousand dimensions first: dot products survive (Johnson-Lindenstrauss),
memory and all-reduce shrink.
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
    # A rank with no examples in this sample (or chunk) adds zeros to the sum.
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    trained = [g for g, p in zip(grads, model.parameters(), strict=True) if p.requires_grad]
    grad = torch.cat([g.reshape(-1) for g in trained])
    total = torch.cat([grad.double(), torch.tensor([count], dtype=torch.float64)]).to(device)
    dist.all_reduce(total)
    model.zero_grad(set_to_none=True)
    return (total[:-1] / total[-1].clamp(min=1)).float().cpu()


def chunk_scores(directions: list[Tensor], valid: list[Tensor]) -> np.ndarray:
    """[K, J] dot products of K training chunks' Adam directions with J validation chunks'
    gradients: their mean is the group's score, their spread its noise."""
    return (torch.stack(directions).double() @ torch.stack(valid).double().T).numpy()


def bootstrap_noise(scores: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """Standard error of each group's score minus the groups' mean, from [G, K, J] chunk
    scores: training chunks (the same examples in every group) and validation chunks (shared)
    are resampled together for all groups, so the noise is that of their differences."""
    groups, k, j = scores.shape
    rng = np.random.default_rng(seed)
    out = np.empty((draws, groups))
    for b in range(draws):
        rows, cols = rng.integers(k, size=k), rng.integers(j, size=j)
        out[b] = scores[:, rows][:, :, cols].mean((1, 2))
    centred = out - out.mean(1, keepdims=True)
    return centred.std(0, ddof=1) if draws > 1 else np.zeros(groups)


def accumulated(
    scores: list[list[float]], noise: list[list[float]], lrs: list[float]
) -> tuple[np.ndarray, np.ndarray]:
    """The stages' scores averaged with their learning rates as weights (the paper's
    accumulation), and the noise of that average (stages drew independent samples)."""
    lr = np.asarray(lrs, dtype=np.float64)
    share = lr / lr.sum()
    mean = share @ np.asarray(scores, dtype=np.float64)
    se = np.sqrt(share**2 @ np.asarray(noise, dtype=np.float64) ** 2)
    return mean, se


def group_weights(
    scores: list[list[float]],
    lrs: list[float],
    tau: float,
    noise: list[list[float]] | None = None,
    noise_z: float = 0.0,
) -> np.ndarray:
    """softmax(s / tau) over the raw learning-rate-weighted influence s, as the paper does.
    Each group's difference from the groups' mean first shrinks towards 0 by `noise_z` of its
    standard error (soft thresholding): differences inside the noise give uniform weights
    instead of a reweighting by chance, and `noise_z=0` is the paper's rule exactly."""
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    noise = noise if noise is not None else [[0.0] * len(s) for s in scores]
    mean, se = accumulated(scores, noise, lrs)
    difference = mean - mean.mean()
    shrunk = np.sign(difference) * np.maximum(np.abs(difference) - noise_z * se, 0.0)
    logits = shrunk / tau
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()
