"""The consolidated model file: weights plus everything needed to rebuild and judge them."""

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from genrec.errors import DataError
from genrec.trainer.model import GenerativeRecommender, ModelConfig


def save_model(model: GenerativeRecommender, path: Path, **extra: Any) -> None:
    """Writes through a temporary file, so a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    payload = {"model_config": dataclasses.asdict(model.config), "state_dict": state, **extra}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_model(
    path: Path, device: torch.device | str = "cpu"
) -> tuple[GenerativeRecommender, dict[str, Any]]:
    """The model in eval mode and the checkpoint's other entries."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        model = GenerativeRecommender(ModelConfig(**payload.pop("model_config")))
        model.load_state_dict(payload.pop("state_dict"))
    except (OSError, RuntimeError, KeyError, TypeError, EOFError) as err:
        raise DataError(str(path), f"not a genrec model checkpoint: {err}") from err
    return model.to(device).eval(), payload
