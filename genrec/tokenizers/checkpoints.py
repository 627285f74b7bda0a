"""Building tokenizers from config, and checkpoints that rebuild them exactly.

A checkpoint holds the state dict and the spec (tokenizer config, input and CF dims, seed), so
`load_tokenizer(path)` needs nothing else: what a Ray actor needs to tokenize item shards.
"""

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from genrec.provenance import atomic_file
from genrec.tokenizers.base import Tokenizer
from genrec.tokenizers.config import CODEBOOK_SIZE, TokenizerConfig, TokenizerName
from genrec.tokenizers.letter import Letter
from genrec.tokenizers.mq import MaskedVQ
from genrec.tokenizers.rqkmeans import RQKMeans
from genrec.tokenizers.rqvae import RQVAE


def build_tokenizer(
    cfg: TokenizerConfig, input_dim: int, seed: int, cf_dim: int | None = None
) -> Tokenizer:
    """The configured tokenizer, untrained; an unset codebook size, which a catalogue would
    have sized (genrec.stages.data, `fit_and_tokenize`), is TIGER's 256."""
    if cfg.codebook_size is None:
        cfg = OmegaConf.merge(OmegaConf.structured(cfg), {"codebook_size": CODEBOOK_SIZE})
    if cfg.name is TokenizerName.rqkmeans:
        tok: Tokenizer = RQKMeans(
            input_dim, cfg.num_levels, cfg.codebook_size, cfg.kmeans_iters, seed
        )
    elif cfg.name is TokenizerName.rqvae:
        tok = RQVAE(input_dim, cfg, seed)
    elif cfg.name is TokenizerName.letter:
        tok = Letter(input_dim, cfg, seed, cf_dim=cf_dim or 1)
    else:
        tok = MaskedVQ(input_dim, cfg, seed)
    tok.spec = {
        "tokenizer": OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True),
        "input_dim": input_dim,
        "seed": seed,
        "cf_dim": cf_dim,
    }
    return tok


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    with atomic_file(path) as tmp:
        torch.save({"spec": tok.spec, "state_dict": tok.state_dict()}, tmp)


def load_tokenizer(path: str | Path) -> Tokenizer:
    blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    spec = blob["spec"]
    cfg = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(TokenizerConfig), spec["tokenizer"])
    )
    tok = build_tokenizer(cfg, spec["input_dim"], spec["seed"], spec["cf_dim"])
    tok.load_state_dict(blob["state_dict"])
    return tok.eval()
