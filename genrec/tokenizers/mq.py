"""TokenRec's masked vector-quantized tokenizer (MQ) over CF embeddings, for users and items.

`num_levels` parallel encoders each see the CF embedding with a random share of its dimensions
masked, and quantize into their own codebook; the codewords are summed and decoded back to the
unmasked embedding. Unlike the public code, the straight-through output is what is decoded, so
the encoders receive gradient.
"""

import torch
from torch import nn

from genrec.tokenizers.config import TokenizerConfig
from genrec.tokenizers.kmeans import kmeans, nearest
from genrec.tokenizers.quantizer import Codebook
from genrec.tokenizers.training import VQAutoencoder, chunked, chunked_mse, mlp


class MaskedVQ(VQAutoencoder):
    def __init__(self, input_dim: int, cfg: TokenizerConfig, seed: int = 0):
        super().__init__(cfg, seed)
        torch.manual_seed(seed)
        dims = [input_dim, *cfg.hidden_dims, cfg.latent_dim]
        self.encoders = nn.ModuleList(mlp(dims, cfg.dropout) for _ in range(cfg.num_levels))
        self.codebooks = nn.ModuleList(
            Codebook(cfg.codebook_size, cfg.latent_dim, cfg.ema, cfg.ema_decay, cfg.rotation_trick)
            for _ in range(cfg.num_levels)
        )
        self.decoder = mlp(dims[::-1], cfg.dropout)

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * (torch.rand_like(x) >= self.cfg.mq.mask_ratio)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x rebuilt, codes [N, L], summed codebook + weighted commitment loss)."""
        z_sum, codes, vq_loss = 0.0, [], 0.0
        for encoder, codebook in zip(self.encoders, self.codebooks, strict=True):
            q, level_codes, (codebook_loss, commitment) = codebook(encoder(self._masked(x)))
            z_sum = z_sum + q
            codes.append(level_codes)
            vq_loss = vq_loss + codebook_loss + self.cfg.commitment * commitment
        return self.decoder(z_sum), torch.stack(codes, dim=1), vq_loss

    def batch_losses(self, x: torch.Tensor, cf: torch.Tensor | None) -> dict[str, torch.Tensor]:
        x_hat, _, vq_loss = self(x)
        reconstruction = ((x_hat - x) ** 2).sum(-1).mean()
        return {
            "reconstruction": reconstruction,
            "quantization": vq_loss,
            "loss": reconstruction + vq_loss,
        }

    @torch.no_grad()
    def init_codebooks(self, vectors: torch.Tensor) -> None:
        for level, (encoder, codebook) in enumerate(
            zip(self.encoders, self.codebooks, strict=True)
        ):
            z = chunked(encoder, vectors)
            codebook.set_codewords(
                kmeans(z, codebook.size, self.cfg.kmeans_iters, self.seed + level)
            )

    @torch.no_grad()
    def restart_dead_codes(self, vectors: torch.Tensor, generator: torch.Generator) -> list[int]:
        return [
            codebook.restart_dead(chunked(encoder, vectors), generator)
            for encoder, codebook in zip(self.encoders, self.codebooks, strict=True)
        ]

    @torch.no_grad()
    def encode(self, vectors: torch.Tensor) -> torch.Tensor:
        self.eval()
        return chunked(self._codes, vectors)

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        """Each encoder's nearest codeword, without decoding."""
        pairs = zip(self.encoders, self.codebooks, strict=True)
        return torch.stack([nearest(encoder(x), cb.weight)[0] for encoder, cb in pairs], dim=1)

    @torch.no_grad()
    def last_level_distances(self, vectors: torch.Tensor) -> torch.Tensor:
        self.eval()
        return torch.cdist(chunked(self.encoders[-1], vectors), self.codebooks[-1].weight) ** 2

    @torch.no_grad()
    def reconstruction_error(self, vectors: torch.Tensor) -> float:
        self.eval()
        return chunked_mse(lambda chunk: self(chunk)[0], vectors)
