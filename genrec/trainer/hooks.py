"""What the shared training loop and evaluation ask of a method (genrec/methods/ supplies it)."""

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from omegaconf import DictConfig

from genrec.trainer.end_to_end import EndToEnd
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.objective import Objective
from genrec.trainer.ranking import Ranker


class MethodHooks(Protocol):
    name: str
    # The model with the method's output head.
    build_model: Callable[[ModelConfig], GenerativeRecommender]
    # How a batch becomes a loss (from the config, the run's IDs and their table files).
    objective: Callable[[DictConfig, ItemCodes, list[Path]], Objective]
    # How the model recommends for evaluation.
    ranker: Callable[[DictConfig, ItemCodes, list[Path]], Ranker]
    # Model config fields the method derives from the rest of the config.
    model_fields: Callable[[DictConfig], dict[str, int]]
    # A tokenizer trained with the model (ETEGRec), from the run's tables; None: IDs are fixed.
    joint: Callable[[DictConfig, list[Path], int, torch.device], EndToEnd | None]
