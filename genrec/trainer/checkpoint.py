"""The consolidated model file: weights plus everything needed to rebuild and judge them."""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch
from torch import nn

from genrec.errors import DataError
from genrec.provenance import atomic_file
from genrec.trainer.model import GenerativeRecommender, ModelConfig


def model_payload(model: GenerativeRecommender, **extra: Any) -> dict[str, Any]:
    """Weights (fp32, CPU), the config that builds the model, and plain-data extras."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    return {"model_config": dataclasses.asdict(model.config), "state_dict": state, **extra}


def save_model(model: GenerativeRecommender, path: Path, **extra: Any) -> None:
    with atomic_file(path) as tmp:
        torch.save(model_payload(model, **extra), tmp)


def load_model(
    path: Path,
    build: Callable[[ModelConfig], nn.Module] = GenerativeRecommender,
    device: torch.device | str = "cpu",
) -> tuple[GenerativeRecommender, dict[str, Any]]:
    """The model in eval mode and the checkpoint's other entries."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = build(ModelConfig(**payload.pop("model_config")))
        model.load_state_dict(payload.pop("state_dict"))
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, UnpicklingError) as err:
        raise DataError(str(path), f"not a genrec model checkpoint: {err}") from err
    return model.to(device).eval(), payload
