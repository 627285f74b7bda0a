"""The root configuration: structured dataclasses, YAML presets and `key=value` overrides.

Every stage reads one `GenrecConfig`; unknown keys and wrong types are errors naming the key.
"""

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genrec.data_pipeline.config import DataConfig, FeaturesConfig
from genrec.errors import ConfigError
from genrec.tokenizers.config import LightGCNConfig, SASRecConfig, TokenizerConfig


@dataclass
class GenrecConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    lightgcn: LightGCNConfig = field(default_factory=LightGCNConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    message = str(err).splitlines()[0]
    return f"config key '{key}': {message}" if key else message


def load_config(files: list[str | Path] = (), overrides: list[str] = ()) -> DictConfig:
    """Merge the schema defaults, then each YAML file, then the `key=value` overrides."""
    cfg = OmegaConf.structured(GenrecConfig)
    for path in files:
        try:
            layer = OmegaConf.load(path)
        except (OSError, ValueError, OmegaConfBaseException) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from err
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: {_describe(err)}") from err
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise ConfigError(f"override '{item}': {_describe(err)}") from err
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Checks that the types alone cannot express."""
    data = cfg.data
    if data.min_user_interactions < 3:
        raise ConfigError(
            "config key 'data.min_user_interactions' must be >= 3: leave-one-out needs a "
            "training item, a validation target and a test target per user"
        )
    for key in ("min_item_interactions", "max_history", "users_per_shard"):
        if data[key] < 1:
            raise ConfigError(f"config key 'data.{key}' must be >= 1, got {data[key]}")
    if data.format.name != "synthetic" and not data.interactions:
        raise ConfigError(
            f"config key 'data.interactions' is required for data.format={data.format.name}"
        )
