"""The root configuration: structured dataclasses, YAML presets and `key=value` overrides.

Every stage reads one `GenrecConfig`; unknown keys and wrong types are errors naming the key.
"""

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genrec.cluster.config import ClusterConfig
from genrec.data_pipeline.config import DataConfig, FeaturesConfig
from genrec.errors import ConfigError
from genrec.recipes import RECIPES, Method
from genrec.tokenizers.config import LightGCNConfig, SASRecConfig, TokenizerConfig
from genrec.trainer.config import EvalConfig, TrainerConfig


@dataclass
class GenrecConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    method: Method = Method.tiger
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    lightgcn: LightGCNConfig = field(default_factory=LightGCNConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    message = str(err).splitlines()[0]
    return f"config key '{key}': {message}" if key else message


def _merge(cfg: DictConfig, layer: DictConfig, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}{_describe(err)}") from err


def _layers(files: list[str | Path], overrides: list[str]) -> list[tuple[DictConfig, str]]:
    """Each YAML file, then each override, with the prefix its errors are reported under."""
    layers = []
    for path in files:
        try:
            layers.append((OmegaConf.load(path), f"{path}: "))
        except (OSError, ValueError, OmegaConfBaseException) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from err
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            layers.append((OmegaConf.from_dotlist([item]), f"override '{item}': "))
        except OmegaConfBaseException as err:
            raise ConfigError(f"override '{item}': {_describe(err)}") from err
    return layers


def load_config(files: list[str | Path] = (), overrides: list[str] = ()) -> DictConfig:
    """Merge the schema defaults, the method's recipe, each YAML file, then the overrides."""
    layers = _layers(files, overrides)
    cfg = OmegaConf.structured(GenrecConfig)
    for layer, where in layers:
        cfg = _merge(cfg, layer, where)
    recipe = OmegaConf.create(RECIPES[cfg.method])
    cfg = _merge(OmegaConf.structured(GenrecConfig), recipe, f"recipe {cfg.method.name}: ")
    for layer, where in layers:
        cfg = _merge(cfg, layer, where)
    validate(cfg)
    return cfg


def config_from_dict(values: dict) -> DictConfig:
    """A config back from its plain form (`provenance.to_plain`), e.g. in a Ray worker."""
    return _merge(OmegaConf.structured(GenrecConfig), OmegaConf.create(values), "")


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
    if cfg.cluster.num_workers < 1:
        raise ConfigError(
            f"config key 'cluster.num_workers' must be >= 1, got {cfg.cluster.num_workers}"
        )
    if data.format.name != "synthetic" and not data.interactions:
        raise ConfigError(
            f"config key 'data.interactions' is required for data.format={data.format.name}"
        )
