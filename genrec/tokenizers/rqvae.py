"""RQ-VAE (TIGER): an MLP autoencoder whose latent is quantized by residual codebooks.

The reconstruction loss is summed over dimensions rather than averaged: with a mean, the
quantization loss dominates and codebooks collapse (the RQ-VAE-Recommender / GRID experience).
"""

import torch

from genrec.tokenizers.config import TokenizerConfig
from genrec.tokenizers.quantizer import ResidualQuantizer
from genrec.tokenizers.training import VQAutoencoder, Whitening, chunked, chunked_mse, mlp


class RQVAE(VQAutoencoder):
    def __init__(self, input_dim: int, cfg: TokenizerConfig, seed: int = 0):
        super().__init__(cfg, seed)
        torch.manual_seed(seed)
        dims = [input_dim, *cfg.hidden_dims, cfg.latent_dim]
        self.encoder = mlp(dims, cfg.dropout)
        if cfg.whiten:
            self.encoder.insert(0, Whitening(input_dim))
        self.decoder = mlp(dims[::-1], cfg.dropout)
        self.quantizer = ResidualQuantizer(
            cfg.num_levels,
            cfg.codebook_size,
            cfg.latent_dim,
            cfg.ema,
            cfg.ema_decay,
            cfg.rotation_trick,
        )

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(x rebuilt, intermediate terms) for a batch: losses, z_q, codes, level residuals."""
        z_q, codes, (codebook, commitment), residuals = self.quantizer(self.encoder(x))
        x_hat = self.decoder(z_q)
        return x_hat, {
            "reconstruction": ((x_hat - x) ** 2).sum(-1).mean(),
            "quantization": codebook + self.cfg.commitment * commitment,
            "z_q": z_q,
            "codes": codes,
            "residuals": residuals,
        }

    def batch_losses(self, x: torch.Tensor, cf: torch.Tensor | None) -> dict[str, torch.Tensor]:
        _, terms = self.quantize(x)
        losses = {"reconstruction": terms["reconstruction"], "quantization": terms["quantization"]}
        losses.update(self.regularizers(terms, cf))
        losses["loss"] = sum(losses.values())
        return losses

    def regularizers(self, terms: dict, cf: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Extra weighted loss terms; none for plain RQ-VAE."""
        return {}

    @torch.no_grad()
    def init_codebooks(self, vectors: torch.Tensor) -> None:
        latent = chunked(self.encoder, vectors)
        self.quantizer.kmeans_init(latent, self.cfg.kmeans_iters, self.seed)

    @torch.no_grad()
    def restart_dead_codes(self, vectors: torch.Tensor, generator: torch.Generator) -> list[int]:
        return self.quantizer.restart_dead_codes(chunked(self.encoder, vectors), generator)

    @torch.no_grad()
    def encode(self, vectors: torch.Tensor) -> torch.Tensor:
        self.eval()
        return chunked(lambda chunk: self.quantizer.assign(self.encoder(chunk))[0], vectors)

    @torch.no_grad()
    def last_level_distances(self, vectors: torch.Tensor) -> torch.Tensor:
        self.eval()
        residual = self.quantizer.residuals(chunked(self.encoder, vectors))[-1]
        return torch.cdist(residual, self.quantizer.levels[-1].weight) ** 2

    @torch.no_grad()
    def reconstruction_error(self, vectors: torch.Tensor) -> float:
        self.eval()
        return chunked_mse(lambda chunk: self.quantize(chunk)[0], vectors)
