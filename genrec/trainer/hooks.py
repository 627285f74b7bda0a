"""What the shared training loop and evaluation ask of a method (genrec/methods/ supplies it)."""

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from omegaconf import DictConfig

from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.objective import Objective
from genrec.trainer.ranking import Ranker


class MethodHooks(Protocol):
    name: str
    # The semantic-ID tables the model reads, one per code group (group 0 first).
    code_tables: Callable[[Path], list[Path]]
    # The model with the method's output head.
    build_model: Callable[[ModelConfig], GenerativeRecommender]
    # How a batch becomes a loss.
    objective: Callable[[DictConfig], Objective]
    # How the model recommends for evaluation.
    ranker: Callable[[DictConfig, ItemCodes], Ranker]
