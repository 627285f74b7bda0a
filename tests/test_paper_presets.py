"""The paper presets (configs/methods/<method>_paper.yaml) load, name their method and keep
the official code's values (each value's source is a comment in the preset)."""

from pathlib import Path

import pytest

from genrec.config import load_config
from genrec.tokenizers.config import CollisionMode, TokenizerName
from genrec.trainer.config import Negatives, RetrievalLoss, SiaGradient, UserTokens

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "methods"
METHODS = ("mtgrec", "etegrec", "tokenrec", "letter")


def preset(method: str) -> Path:
    return PRESETS / f"{method}_paper.yaml"


@pytest.mark.parametrize("method", METHODS)
def test_each_paper_preset_loads_and_names_its_method(method):
    path = preset(method)
    header = path.read_text().splitlines()
    assert header[0].startswith("#")
    assert any(f"genrec run configs/methods/{method}_paper.yaml" in line for line in header)
    assert load_config([path]).method == method


def test_mtgrec_paper_values():
    cfg = load_config([preset("mtgrec")])
    assert cfg.data.max_history == 20
    assert cfg.trainer.model.num_user_buckets == 1
    assert (cfg.trainer.model.d_model, cfg.trainer.model.d_ff, cfg.trainer.model.ffn) == (
        128,
        512,
        "relu",
    )
    assert list(cfg.trainer.curriculum.stage_epochs) == [60, 20, 20, 20, 20, 20, 20]
    assert cfg.tokenizer.tables == cfg.tokenizer.keep_epochs == 11
    assert list(cfg.tokenizer.hidden_dims) == [2048, 1024, 512, 256]
    assert cfg.tokenizer.latent_dim == 128 and cfg.tokenizer.ema and cfg.tokenizer.whiten
    assert cfg.finetune.lr == 2e-4 and cfg.evaluate.beam_size == 50


def test_etegrec_paper_values():
    cfg = load_config([preset("etegrec")])
    assert cfg.sasrec.hidden == 256 and cfg.tokenizer.input.value == "sasrec"
    assert list(cfg.tokenizer.hidden_dims) == [512, 256] and cfg.tokenizer.latent_dim == 128
    assert cfg.trainer.model.encoder_layers == cfg.trainer.model.decoder_layers == 6
    e = cfg.trainer.etegrec
    assert (e.cycle, e.warmup_epochs, e.tokenizer_lr) == (2, 10, 1e-4)
    assert e.sia_gradient is SiaGradient.first and e.negatives is Negatives.local
    assert cfg.finetune.lr == 5e-4 and cfg.evaluate.beam_size == 20


def test_tokenrec_paper_values():
    cfg = load_config([preset("tokenrec")])
    assert cfg.tokenizer.name is TokenizerName.mq
    assert (cfg.tokenizer.num_levels, cfg.tokenizer.codebook_size) == (3, 256)
    assert cfg.tokenizer.mq.mask_ratio == 0.2 and cfg.tokenizer.latent_dim == 512
    assert cfg.lightgcn.dim == 64
    t = cfg.trainer.tokenrec
    assert t.loss is RetrievalLoss.cosine and t.user_tokens is UserTokens.table
    assert cfg.trainer.model.d_model == 512 and cfg.trainer.lr == 5e-5


def test_letter_paper_values():
    cfg = load_config([preset("letter")])
    assert cfg.tokenizer.name is TokenizerName.letter and cfg.tokenizer.num_levels == 4
    assert cfg.tokenizer.collisions is CollisionMode.sinkhorn
    assert cfg.tokenizer.sinkhorn_epsilon == 0.003 and cfg.tokenizer.latent_dim == 32
    assert (cfg.tokenizer.letter.cf_weight, cfg.tokenizer.letter.diversity_weight) == (0.01, 1e-4)
    assert cfg.sasrec.hidden == 32 and cfg.data.max_history == 20
    assert cfg.trainer.model.encoder_layers == 4 and cfg.evaluate.beam_size == 20
