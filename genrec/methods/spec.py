"""A method is a spec over the shared stages, loop and Ray job: its config defaults, the stages
`genrec run` runs for it, and the hooks the trainer calls (genrec/trainer/hooks.py). The
defaults are the generative recommender's: one table of IDs, code generation, beam search."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genrec.artifacts import semantic_ids
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.objective import CodeGeneration, Objective
from genrec.trainer.ranking import BeamSearchRanker, Ranker


def final_ids(tokenizer_dir: Path) -> list[Path]:
    """One code group: the IDs of the tokenizer's final epoch."""
    return [semantic_ids(tokenizer_dir)]


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
    code_tables: Callable[[Path], list[Path]] = final_ids
    build_model: Callable[[ModelConfig], GenerativeRecommender] = GenerativeRecommender
    objective: Callable[[DictConfig], Objective] = code_generation
    ranker: Callable[[DictConfig, ItemCodes], Ranker] = beam_search
