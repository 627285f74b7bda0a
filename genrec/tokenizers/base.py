"""The one interface every item tokenizer implements.

A tokenizer maps item vectors to `num_levels` codes in [0, codebook_size). It is an
`nn.Module`, so a checkpoint is its state dict plus the config that built it; once loaded it is
stateless: `encode` in eval mode is deterministic and batched, so many Ray actors can each load
a checkpoint and tokenize item shards in parallel.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn

EpochCallback = Callable[[int, "Tokenizer", dict[str, float]], None]


class Tokenizer(nn.Module, ABC):
    num_levels: int
    codebook_size: int

    @abstractmethod
    def fit(
        self,
        vectors: torch.Tensor,
        cf: torch.Tensor | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        """Train on item vectors (and CF embeddings where the method uses them).

        `on_epoch(epoch, self, logs)` is called after each epoch (after the single pass of
        non-iterative methods), so callers can checkpoint and log.
        """

    @abstractmethod
    def encode(self, vectors: torch.Tensor) -> torch.Tensor:
        """Codes [N, num_levels] (int64) of the given item vectors."""

    @abstractmethod
    def last_level_distances(self, vectors: torch.Tensor) -> torch.Tensor:
        """[N, codebook_size] distances of each item to the last level's codewords.

        Collision resolution by Sinkhorn re-assigns colliding items on that level.
        """

    @abstractmethod
    def reconstruction_error(self, vectors: torch.Tensor) -> float:
        """Mean squared error of the item vectors rebuilt from their codes."""
