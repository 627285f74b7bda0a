"""A method is a spec over the shared stages, loop and Ray job: its config defaults, the stages
`genrec run` runs for it, and the hooks the trainer calls (genrec/trainer/hooks.py). The
defaults are the generative recommender's: code generation, beam search. How many semantic-ID
tables the model reads is config (`tokenizer.tables`), so any method can read several."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.objective import CodeGeneration, Objective
from genrec.trainer.ranking import BeamSearchRanker, Ranker


def code_generation(cfg: DictConfig) -> Objective:
    return CodeGeneration(cfg.trainer.temperature)


def beam_search(cfg: DictConfig, codes: ItemCodes) -> Ranker:
    return BeamSearchRanker.over(codes)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    # Config values applied under the user's YAML files and overrides.
    defaults: dict[str, Any] = field(default_factory=dict)
    # What `genrec run` runs, in order (functions of genrec.stages; each pulls its inputs).
    stages: tuple[str, ...] = ("data", "tokenize", "train", "evaluate")
    build_model: Callable[[ModelConfig], GenerativeRecommender] = GenerativeRecommender
    objective: Callable[[DictConfig], Objective] = code_generation
    ranker: Callable[[DictConfig, ItemCodes], Ranker] = beam_search
