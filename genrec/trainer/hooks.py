"""What the shared training loop and evaluation ask of a method (genrec/methods/ supplies it).

A method plugs into the loop in two ways: the `MethodHooks` it is built from (its model, loss,
ranker), and the `Plugin`s it adds to a run, each called at the loop's boundaries the way
Lightning callbacks are (the step's updates, the end of an optimizer step, a new best
validation) and each a named state of every checkpoint. The loop knows no method by name.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.objective import Batch, Objective
from genrec.trainer.ranking import Ranker

# One engine's part of a micro-step: the engine, its loss, the loss's named terms.
Update = tuple[Any, Tensor, dict[str, Tensor]]


class Plugin:
    """A method's part of a training run. Every hook defaults to doing nothing, so a plugin
    overrides only what it changes; `name` is its checkpoint state (`<name>.pt`)."""

    name = "plugin"

    def model_config(self, config: ModelConfig, codebook_size: int) -> ModelConfig:
        """The loop's model config with what this plugin needs of the model."""
        return config

    def model_epochs(self, epochs: int) -> int:
        """Epochs the recommender's optimizer steps in (its schedule spans only those)."""
        return epochs

    def attach(self, loop: Any) -> None:
        """Called once the loop (genrec.trainer.train.Loop, which imports this module) has its
        engine, before any checkpoint is restored."""

    def engines(self) -> dict[str, Any]:
        """Further DeepSpeed engines the loop checkpoints by tag and counts steps of."""
        return {}

    def updates(self, batch: Batch) -> list[Update] | None:
        """The micro-step's updates instead of the loop's (None: the loop's own objective)."""
        return None

    def step_end(self, writer: SummaryWriter | None) -> bool:
        """At the end of each optimizer step (all ranks together); True stops training."""
        return False

    def validate_now(self, due: bool) -> bool | None:
        """Whether to validate after this step, where the plugin moves validations to steps
        whose model is worth measuring (keeping a moved one in its state); `due`: the loop's
        cadence says so. None: the cadence decides."""
        return None

    def new_best(self) -> None:
        """Validation just improved: the model now selected was selected with this state."""

    def best_payload(self) -> dict[str, Any]:
        """What the selected model file adds (IDs the weights go with)."""
        return {}

    def group_weights(self) -> np.ndarray | None:
        """The code groups' sampling weights the stream draws with (None: uniform)."""
        return None

    def summary(self) -> dict[str, Any]:
        """What train.json adds, under this plugin's own keys."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


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
    # The method's plugins for a run (config, tables, number of items, device): cheap to
    # build, so that building them checks the run's inputs before Ray starts.
    plugins: Callable[[DictConfig, list[Path], int, torch.device], list[Plugin]]
