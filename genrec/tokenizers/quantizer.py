"""Vector quantization layers: one codebook (`Codebook`) and a residual stack of them.

Gradients reach the encoder through the straight-through estimator, or optionally the
rotation trick (Fifty et al., 2024), which carries the angle between input and codeword into
the gradient. Codebooks learn by gradient (codebook + commitment loss) or by EMA of assigned
vectors. K-means initialisation and dead-code restarts keep codes in use.
"""

import torch
import torch.nn.functional as F
from torch import nn

from genrec.tokenizers.kmeans import nearest, seed_codewords


def rotate_to(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The rotation trick: equal to q in value; the gradient flows to x through a fixed rotation."""
    eps = 1e-8
    x_norm = x.norm(dim=-1, keepdim=True).clamp_min(eps)
    q_norm = q.norm(dim=-1, keepdim=True).clamp_min(eps)
    e, q_hat = (x / x_norm).detach(), (q / q_norm).detach()
    w = F.normalize(e + q_hat, dim=-1, eps=eps)
    rotated = x - 2 * w * (w * x).sum(-1, keepdim=True) + 2 * q_hat * (e * x).sum(-1, keepdim=True)
    return (q_norm / x_norm).detach() * rotated


class Codebook(nn.Module):
    """K codewords of dimension D."""

    def __init__(self, size: int, dim: int, ema: bool, ema_decay: float, rotation_trick: bool):
        super().__init__()
        self.ema, self.decay, self.rotation_trick = ema, ema_decay, rotation_trick
        init = torch.randn(size, dim) / dim**0.5
        if ema:
            self.register_buffer("weight", init)
            self.register_buffer("ema_count", torch.ones(size))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.weight = nn.Parameter(init)

    @property
    def size(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def set_codewords(self, codewords: torch.Tensor, which: torch.Tensor | None = None) -> None:
        """Overwrite all codewords, or those selected by the boolean mask `which`."""
        which = torch.ones(self.size, dtype=torch.bool) if which is None else which
        self.weight[which] = codewords
        if self.ema:
            self.ema_count[which] = 1.0
            self.ema_sum[which] = codewords

    @torch.no_grad()
    def restart_dead(self, x: torch.Tensor, generator: torch.Generator) -> int:
        """Move codewords that no row of x uses onto randomly chosen rows; returns how many."""
        codes, _ = nearest(x, self.weight)
        dead = torch.ones(self.size, dtype=torch.bool)
        dead[codes] = False
        picks = torch.randint(len(x), (int(dead.sum()),), generator=generator)
        self.set_codewords(x[picks], which=dead)
        return int(dead.sum())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(output carrying gradient to x, codes, codebook + commitment loss without its weight)."""
        codes, _ = nearest(x.detach(), self.weight.detach())
        q = F.embedding(codes, self.weight)  # indexing's backward is not deterministic on CPU
        if self.ema and self.training:
            self._ema_update(x.detach(), codes)
        codebook_loss = 0.0 if self.ema else F.mse_loss(q, x.detach())
        commitment = F.mse_loss(x, q.detach())
        out = rotate_to(x, q) if self.rotation_trick else x + (q - x).detach()
        return out, codes, torch.stack([torch.as_tensor(codebook_loss), commitment])

    def _ema_update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        onehot = F.one_hot(codes, self.size).type_as(x)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.T @ x, alpha=1 - self.decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + self.size * 1e-5) * n  # Laplace smoothing
        self.weight.copy_(self.ema_sum / count[:, None])


class ResidualQuantizer(nn.Module):
    """L codebooks, each quantizing what the previous levels left over."""

    def __init__(
        self,
        num_levels: int,
        codebook_size: int,
        dim: int,
        ema: bool = False,
        ema_decay: float = 0.99,
        rotation_trick: bool = False,
    ):
        super().__init__()
        self.levels = nn.ModuleList(
            Codebook(codebook_size, dim, ema, ema_decay, rotation_trick) for _ in range(num_levels)
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """(quantized z, codes [N, L], losses [2] summed over levels, per-level residuals)."""
        residual, out, codes, losses, residuals = z, torch.zeros_like(z), [], 0.0, []
        for codebook in self.levels:
            residuals.append(residual)
            q, level_codes, level_losses = codebook(residual)
            residual = residual - q
            out = out + q
            codes.append(level_codes)
            losses = losses + level_losses
        return out, torch.stack(codes, dim=1), losses, residuals

    @torch.no_grad()
    def assign(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Codes [N, L] and the input of every level, without gradient or codebook updates."""
        codes, residuals, residual = [], [], z
        for codebook in self.levels:
            residuals.append(residual)
            level_codes, _ = nearest(residual, codebook.weight)
            residual = residual - codebook.weight[level_codes]
            codes.append(level_codes)
        return torch.stack(codes, dim=1), residuals

    def residuals(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The input of every level (for init, restarts and Sinkhorn)."""
        return self.assign(z)[1]

    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor, iters: int, seed: int) -> None:
        """Codebook l = k-means centroids of the level-l residuals of the data (all of them,
        jittered, where a deep level's residuals hold fewer distinct points than codes)."""
        residual = z
        for level, codebook in enumerate(self.levels):
            codebook.set_codewords(seed_codewords(residual, codebook.size, iters, seed + level))
            codes, _ = nearest(residual, codebook.weight)
            residual = residual - codebook.weight[codes]

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, generator: torch.Generator) -> list[int]:
        """Re-seat each level's unused codewords on its residuals; returns the count per level."""
        return [
            codebook.restart_dead(residual, generator)
            for codebook, residual in zip(self.levels, self.residuals(z), strict=True)
        ]
