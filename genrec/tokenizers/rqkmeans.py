"""RQ-KMeans: residual k-means, the training-free semantic-id baseline.

Level l clusters what levels 0..l-1 left unexplained, so each extra level refines the item's
code; there is no network, only the stacked codebooks.
"""

import torch
from torch import Tensor

from genrec.tokenizers.base import EpochCallback, Tokenizer
from genrec.tokenizers.kmeans import kmeans, nearest, squared_distances


class RQKMeans(Tokenizer):
    codebooks: Tensor

    def __init__(
        self, input_dim: int, num_levels: int, codebook_size: int, iters: int = 50, seed: int = 0
    ):
        super().__init__()
        for name, value in [
            ("input_dim", input_dim),
            ("num_levels", num_levels),
            ("codebook_size", codebook_size),
        ]:
            if value < 1:
                raise ValueError(f"RQKMeans: {name} must be at least 1, got {value}")
        self.input_dim = input_dim
        self.num_levels = num_levels
        self.codebook_size = codebook_size
        self.iters = iters
        self.seed = seed
        self.register_buffer("codebooks", torch.zeros(num_levels, codebook_size, input_dim))

    @torch.no_grad()
    def fit(
        self,
        vectors: Tensor,
        cf: Tensor | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        """Fit one k-means per level on the residuals of the levels before it (`cf` unused)."""
        x = self._check(vectors)
        residual = x.clone()
        for level in range(self.num_levels):
            try:
                centroids = kmeans(residual, self.codebook_size, self.iters, self.seed + level)
            except ValueError as err:
                raise ValueError(f"RQKMeans level {level}: {err}") from err
            self.codebooks[level] = centroids
            residual -= centroids[nearest(residual, centroids)[0]]
        if on_epoch is not None:
            on_epoch(0, self, {"reconstruction_error": self.reconstruction_error(x)})

    @torch.no_grad()
    def encode(self, vectors: Tensor) -> Tensor:
        return self._encode(self._check(vectors, allow_empty=True), self.num_levels)[0]

    @torch.no_grad()
    def last_level_distances(self, vectors: Tensor) -> Tensor:
        """Squared L2 distances of the last level's residuals to the last codebook."""
        residual = self._encode(self._check(vectors, allow_empty=True), self.num_levels - 1)[1]
        return squared_distances(residual, self.codebooks[-1])

    @torch.no_grad()
    def reconstruction_error(self, vectors: Tensor) -> float:
        x = self._check(vectors)
        residual = self._encode(x, self.num_levels)[1]
        return residual.pow(2).mean().item()

    def _encode(self, x: Tensor, levels: int) -> tuple[Tensor, Tensor]:
        """Codes [N, levels] of the first `levels` levels and the residual they leave."""
        residual = x.clone()
        codes = torch.empty(len(x), levels, dtype=torch.long, device=x.device)
        for level, codebook in enumerate(self.codebooks[:levels]):
            codes[:, level] = nearest(residual, codebook)[0]
            residual -= codebook[codes[:, level]]
        return codes, residual

    def _check(self, vectors: Tensor, allow_empty: bool = False) -> Tensor:
        """The vectors as float on the codebooks' device, or a ValueError naming the problem."""
        if vectors.ndim != 2 or vectors.shape[1] != self.input_dim:
            raise ValueError(
                f"RQKMeans: expected vectors of shape [N, {self.input_dim}], "
                f"got {tuple(vectors.shape)}"
            )
        if vectors.shape[0] == 0 and not allow_empty:
            raise ValueError("RQKMeans: got no vectors")
        x = vectors.detach().to(self.codebooks)
        bad = (~torch.isfinite(x)).any(1).sum().item()
        if bad:
            raise ValueError(
                f"RQKMeans: {bad} of {x.shape[0]} vectors contain NaN or infinite values"
            )
        return x
