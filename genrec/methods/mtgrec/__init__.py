"""MTGRec (Zheng et al., SIGIR'25): the RQ-VAE checkpoints of M adjacent epochs are M related
tokenizers; every item gets M semantic IDs (re-tokenized by the Ray actor pool), each training
example is read in one of them, drawn with weights an influence curriculum updates after each
stage; the pre-trained model is then fine-tuned on one tokenizer, chosen by validation.

The budget of `genrec run method=mtgrec` is TIGER's: 6 pre-training epochs (a 2-epoch warm-up,
then three 1-epoch stages; the last epoch keeps the final weights) and 2 fine-tuning epochs
make TIGER's 8.
"""

from pathlib import Path

import torch
from omegaconf import DictConfig

from genrec.methods.mtgrec.curriculum import Curriculum
from genrec.methods.spec import MethodSpec
from genrec.trainer.hooks import Plugin


def curriculum(
    cfg: DictConfig, tables: list[Path], num_items: int, device: torch.device
) -> list[Plugin]:
    """The influence curriculum over the run's tables (fine-tuning reads one: none)."""
    return [Curriculum(cfg, len(tables))] if len(tables) > 1 else []


MTGREC = MethodSpec(
    name="mtgrec",
    summary="M adjacent-epoch RQ-VAE tokenizers, influence curriculum, fine-tune on one",
    defaults={
        "tokenizer": {
            "name": "rqvae",
            "collisions": "dedup",
            "keep_epochs": 10,
            "tables": 10,
            "settle_lr": 0.1,
        },
        "trainer": {
            "temperature": 1.0,
            # The curriculum's stages fill a fixed span, on a decaying schedule.
            "epochs": 6,
            "min_lr_ratio": 0.05,
            "min_gain": 0.0,
            "curriculum": {"stage_epochs": [2, 1, 1, 1], "tau": 1.0},
        },
        "finetune": {"epochs": 2, "lr": 2e-4},
    },
    stages=("data", "retokenize", "train", "finetune", "evaluate"),
    plugins=curriculum,
    finetune_overrides={"trainer": {"curriculum": {"stage_epochs": []}}},
)
