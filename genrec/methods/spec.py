"""A method is a spec over the shared stages, loop and Ray job: its config defaults, the stages
`genrec run` runs for it, and the hooks the trainer calls (genrec/trainer/hooks.py). The
defaults are the generative recommender's: code generation, beam search. How many semantic-ID
tables the model reads is config (`tokenizer.tables`), so any method can read several."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from genrec.trainer.hooks import Plugin
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.objective import CodeGeneration, Objective
from genrec.trainer.ranking import BeamSearchRanker, Ranker


def code_generation(cfg: DictConfig, codes: ItemCodes, tables: list[Path]) -> Objective:
    return CodeGeneration(cfg.trainer.temperature)


def beam_search(cfg: DictConfig, codes: ItemCodes, tables: list[Path]) -> Ranker:
    return BeamSearchRanker.over(codes)


def no_model_fields(cfg: DictConfig) -> dict[str, int | str]:
    return {}


def no_plugins(
    cfg: DictConfig, tables: list[Path], items: int, device: torch.device
) -> list[Plugin]:
    return []


def no_check(cfg: Any) -> None:
    return None


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    # Config values applied under the user's YAML files and overrides.
    defaults: dict[str, Any] = field(default_factory=dict)
    # What `genrec run` runs, in order (functions of genrec.stages; each pulls its inputs).
    stages: tuple[str, ...] = ("data", "tokenize", "train", "evaluate")
    build_model: Callable[[ModelConfig], GenerativeRecommender] = GenerativeRecommender
    objective: Callable[[DictConfig, ItemCodes, list[Path]], Objective] = code_generation
    ranker: Callable[[DictConfig, ItemCodes, list[Path]], Ranker] = beam_search
    # Model config fields the method derives from the rest of the config (TokenRec's).
    model_fields: Callable[[DictConfig], dict[str, int | str]] = no_model_fields
    # The method's own parts of a training run (genrec/trainer/hooks.py).
    plugins: Callable[[DictConfig, list[Path], int, torch.device], list[Plugin]] = no_plugins
    # Whether training changes the items' IDs (they are then written beside the model).
    learns_ids: bool = False
    # Config values the fine-tuning stage sets on top of the run's (after pre-training).
    finetune_overrides: dict[str, Any] = field(default_factory=dict)
    # Checks of the whole config (GenrecConfig) this method needs, when the config is loaded.
    check: Callable[[Any], None] = no_check
