"""What the shared training loop and evaluation ask of a method (genrec/methods/ supplies it)."""

from collections.abc import Callable
from typing import Protocol

from omegaconf import DictConfig

from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.objective import Objective
from genrec.trainer.ranking import Ranker


class MethodHooks(Protocol):
    name: str
    # The model with the method's output head.
    build_model: Callable[[ModelConfig], GenerativeRecommender]
    # How a batch becomes a loss.
    objective: Callable[[DictConfig], Objective]
    # How the model recommends for evaluation.
    ranker: Callable[[DictConfig, ItemCodes], Ranker]
