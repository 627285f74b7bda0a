"""ETEGRec (Liu et al., SIGIR'25): the RQ-VAE, pre-trained on SASRec's item embeddings with
`genrec tokenize`, keeps training beside the recommender in alternating epochs, coupled by
sequence-item and preference-semantic alignment (genrec/methods/etegrec/end_to_end.py); once the
alternation ends, the tokenizer is frozen and the recommender fine-tuned on its final IDs.

The tokenizer is the paper's (encoder 512-256 to a 128-d latent, 3 x 256 codes); the budget of
`genrec run method=etegrec` is TIGER's 8 recommender epochs: 4 in the alternation (cycle 2,
after a 2-epoch warm-up without alignment) and 4 of fine-tuning at the paper's 5e-4.
"""

from typing import Any

from genrec.methods.etegrec.end_to_end import end_to_end
from genrec.methods.spec import MethodSpec
from genrec.schema import Invalid
from genrec.tokenizers.config import TokenizerName


def check(cfg: Any) -> None:
    """What the joint tokenizer needs of the rest of the config."""
    if cfg.tokenizer.name not in (TokenizerName.rqvae, TokenizerName.letter):
        raise Invalid(
            "tokenizer.name",
            f"is {cfg.tokenizer.name.value}; ETEGRec trains an RQ-VAE (rqvae or letter)",
        )
    if cfg.tokenizer.tables != 1:
        raise Invalid("tokenizer.tables", "must be 1: ETEGRec learns one table as it trains")
    if cfg.trainer.zero_stage > 2:
        raise Invalid(
            "trainer.zero_stage",
            f"is {cfg.trainer.zero_stage}; ETEGRec runs on ZeRO 0-2 (its tokenizer reads the "
            "recommender's outputs outside the engine's forward)",
        )


ETEGREC = MethodSpec(
    name="etegrec",
    summary="RQ-VAE trained with the recommender: SIA + PSA, alternating epochs, fine-tuning",
    defaults={
        "tokenizer": {
            "name": "rqvae",
            "input": "sasrec",
            "collisions": "dedup",
            "hidden_dims": [512, 256],
            "latent_dim": 128,
        },
        # A fixed alternation of tokenizer and recommender epochs, on a decaying schedule.
        "trainer": {"temperature": 1.0, "epochs": 8, "min_lr_ratio": 0.05, "min_gain": 0.0},
        "finetune": {"epochs": 4, "lr": 5e-4},
    },
    stages=("data", "tokenize", "train", "finetune", "evaluate"),
    plugins=end_to_end,
    learns_ids=True,
    finetune_overrides={"trainer": {"etegrec": {"joint": False}}},
    check=check,
)
