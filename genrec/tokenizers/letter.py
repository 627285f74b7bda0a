"""LETTER: RQ-VAE regularised toward collaborative signal and code diversity.

- Collaborative alignment: InfoNCE with in-batch negatives between an item's quantized latent
  and its (projected) CF embedding, so items that users treat alike share codes.
- Diversity: each epoch, each level's codewords are clustered (balanced k-means); a residual is
  pulled toward another codeword of its code's cluster against all other codewords, spreading
  items over the codebook.
"""

import torch
import torch.nn.functional as F
from torch import nn

from genrec.tokenizers.config import TokenizerConfig
from genrec.tokenizers.kmeans import balanced_kmeans
from genrec.tokenizers.rqvae import RQVAE


class Letter(RQVAE):
    def __init__(self, input_dim: int, cfg: TokenizerConfig, seed: int = 0, cf_dim: int = 64):
        super().__init__(input_dim, cfg, seed)
        self.cf_projection = nn.Linear(cf_dim, cfg.latent_dim)
        self.register_buffer(
            "code_clusters", torch.zeros(cfg.num_levels, cfg.codebook_size, dtype=torch.long)
        )
        self._generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def start_epoch(self, vectors: torch.Tensor) -> None:
        k = min(self.cfg.letter.diversity_clusters, self.codebook_size)
        for level, codebook in enumerate(self.quantizer.levels):
            labels, _ = balanced_kmeans(codebook.weight, k, seed=self.seed + level)
            self.code_clusters[level] = labels

    def regularizers(self, terms: dict, cf: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if cf is None:
            raise ValueError("LETTER needs CF embeddings (tokenizer.name=letter uses SASRec's)")
        letter = self.cfg.letter
        return {
            "cf_alignment": letter.cf_weight * self.alignment_loss(terms["z_q"], cf),
            "diversity": letter.diversity_weight * self.diversity_loss(terms),
        }

    def alignment_loss(self, z_q: torch.Tensor, cf: torch.Tensor) -> torch.Tensor:
        logits = z_q @ self.cf_projection(cf).T  # dot products, as LETTER: the scale is learned
        labels = torch.arange(len(z_q))
        return F.cross_entropy(logits / self.cfg.letter.cf_temperature, labels)

    def diversity_loss(self, terms: dict) -> torch.Tensor:
        losses = []
        for level, codebook in enumerate(self.quantizer.levels):
            codes = terms["codes"][:, level]
            positives = self._cluster_partners(level, codes)
            distances = torch.cdist(terms["residuals"][level], codebook.weight) ** 2
            logits = -distances / self.cfg.letter.diversity_temperature
            logits = logits.scatter(1, codes[:, None], float("-inf"))
            has_partner = positives != codes
            if has_partner.any():
                losses.append(F.cross_entropy(logits[has_partner], positives[has_partner]))
        return torch.stack(losses).mean() if losses else torch.zeros(())

    def _cluster_partners(self, level: int, codes: torch.Tensor) -> torch.Tensor:
        """A random other codeword of each code's cluster (the code itself if it is alone)."""
        clusters = self.code_clusters[level]
        same = clusters[codes][:, None] == clusters[None, :]
        same[torch.arange(len(codes)), codes] = False
        weights = same.float() + (~same.any(1, keepdim=True)).float() * F.one_hot(
            codes, self.codebook_size
        )
        return torch.multinomial(weights, 1, generator=self._generator).squeeze(1)
