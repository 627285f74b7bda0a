"""The training loop shared by the learned (VQ autoencoder) tokenizers."""

import itertools
from abc import abstractmethod
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from genrec.tokenizers.base import EpochCallback, Tokenizer
from genrec.tokenizers.config import TokenizerConfig, epoch_lr, kept_window
from genrec.tokenizers.quantizer import Codebook

# Rows a full-catalogue pass (codebook init, dead-code restarts, encoding, the report) reads
# at once: its activations are a chunk's, whatever the catalogue.
PASS_CHUNK = 65_536


def chunked(module: Callable[[torch.Tensor], torch.Tensor], vectors: torch.Tensor) -> torch.Tensor:
    """`module` over the rows of `vectors`, a chunk at a time, concatenated."""
    return torch.cat([module(chunk) for chunk in vectors.split(PASS_CHUNK)])


def chunked_mse(rebuild: Callable[[torch.Tensor], torch.Tensor], vectors: torch.Tensor) -> float:
    """Mean squared error of `rebuild(x)` against x over all rows, a chunk at a time."""
    total = sum(
        float(F.mse_loss(rebuild(chunk), chunk, reduction="sum"))
        for chunk in vectors.split(PASS_CHUNK)
    )
    return total / max(vectors.numel(), 1)


def mlp(dims: list[int], dropout: float) -> nn.Sequential:
    """Linear layers with ReLU (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class Whitening(nn.Module):
    """PCA whitening fitted on the item vectors (MTGRec's TIGER++ input): decorrelated, unit
    variance directions, so no few dominant directions decide the first codes. Its mean and
    projection are buffers: checkpoints carry them."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("projection", torch.eye(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(0))
        centred = x - self.mean
        covariance = centred.T @ centred / max(len(x) - 1, 1)
        values, vectors = torch.linalg.eigh(covariance.double())
        self.projection.copy_((vectors / (values.clamp(min=0) + self.eps).sqrt()).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.projection


class VQAutoencoder(Tokenizer):
    """A tokenizer trained by gradient: subclasses give the losses of a batch."""

    def __init__(self, cfg: TokenizerConfig, seed: int):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.num_levels, self.codebook_size = cfg.num_levels, cfg.codebook_size

    @abstractmethod
    def batch_losses(self, x: torch.Tensor, cf: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Named loss terms of one batch; "loss" is the total that is minimised."""

    @abstractmethod
    def init_codebooks(self, vectors: torch.Tensor) -> None:
        """K-means initialisation from the untrained encoder's outputs."""

    @abstractmethod
    def restart_dead_codes(self, vectors: torch.Tensor, generator: torch.Generator) -> list[int]:
        """Re-seat unused codewords; returns how many per level."""

    def param_groups(self) -> list[dict]:
        """Weight decay for the networks only: decaying codewords drags them toward the origin."""
        codebooks = {
            id(p) for m in self.modules() if isinstance(m, Codebook) for p in m.parameters()
        }
        return [
            {
                "params": [p for p in self.parameters() if id(p) not in codebooks],
                "weight_decay": self.cfg.weight_decay,
            },
            {"params": [p for p in self.parameters() if id(p) in codebooks], "weight_decay": 0.0},
        ]

    def prepare(self, vectors: torch.Tensor) -> None:
        """Fits what is computed from the data rather than trained (the whitening)."""
        for module in self.modules():
            if isinstance(module, Whitening):
                module.fit(vectors)

    def start_epoch(self, vectors: torch.Tensor) -> None:
        """Per-epoch refresh (LETTER re-clusters its codebooks here)."""

    def fit(
        self,
        vectors: torch.Tensor,
        cf: torch.Tensor | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        cfg = self.cfg
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        self.eval()
        self.prepare(vectors)
        if cfg.kmeans_init:
            self.init_codebooks(vectors)
        optimizer = torch.optim.AdamW(self.param_groups(), lr=cfg.lr)
        restart_until = cfg.epochs - kept_window(cfg)
        for epoch in tqdm(range(cfg.epochs), desc=type(self).__name__, unit="epoch"):
            for group in optimizer.param_groups:
                group["lr"] = epoch_lr(cfg, epoch)
            self.train()
            self.start_epoch(vectors)
            totals: dict[str, float] = defaultdict(float)
            batches = torch.randperm(len(vectors), generator=generator).split(cfg.batch_size)
            for batch in batches:
                losses = self.batch_losses(vectors[batch], None if cf is None else cf[batch])
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                optimizer.step()
                for name, value in losses.items():
                    totals[name] += float(value.detach()) / len(batches)
            self.eval()
            if cfg.dead_code_restart and epoch < restart_until:
                restarted = self.restart_dead_codes(vectors, generator)
                totals["dead_codes_restarted"] = float(sum(restarted))
            if on_epoch is not None:
                on_epoch(epoch, self, dict(totals))
