"""The root configuration: structured dataclasses, YAML presets and `key=value` overrides.

Every stage reads one `GenrecConfig`. Loading it checks everything that can be checked before
any data is read or Ray is started: unknown keys and wrong types (OmegaConf), then each
section's `check` (genrec/schema.py), each error naming its key.
"""

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from omegaconf import Container, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genrec.cf.config import LightGCNConfig, SASRecConfig
from genrec.cluster.config import ClusterConfig
from genrec.data_pipeline.config import DataConfig, FeaturesConfig
from genrec.errors import ConfigError
from genrec.methods import METHODS, method_spec
from genrec.schema import Invalid, check_tree, described_fields, option
from genrec.tokenizers.config import TokenizerConfig
from genrec.trainer.config import (
    EvalConfig,
    FinetuneConfig,
    RecommendConfig,
    TrainerConfig,
    batch_plan,
)


@dataclass
class GenrecConfig:
    run_dir: str = option("runs/default", "where every stage writes its folder")
    seed: int = option(0, "seed of model initialisation, sampling and shuffling")
    method: str = option("tiger", f"the method: {', '.join(sorted(METHODS))}")
    data: DataConfig = option(DataConfig, "the interaction data")
    features: FeaturesConfig = option(FeaturesConfig, "item text embeddings")
    sasrec: SASRecConfig = option(SASRecConfig, "SASRec: item embeddings and a baseline")
    lightgcn: LightGCNConfig = option(LightGCNConfig, "LightGCN: user and item embeddings")
    tokenizer: TokenizerConfig = option(TokenizerConfig, "the item tokenizer")
    trainer: TrainerConfig = option(TrainerConfig, "the generative recommender's training")
    finetune: FinetuneConfig = option(FinetuneConfig, "fine-tuning on one table (MTGRec, ETEGRec)")
    evaluate: EvalConfig = option(EvalConfig, "evaluation")
    recommend: RecommendConfig = option(RecommendConfig, "batch recommendation")
    cluster: ClusterConfig = option(ClusterConfig, "the Ray cluster training runs on")

    def check(self) -> None:
        if self.method not in METHODS:
            raise Invalid("method", f"is {self.method!r}; choose one of {sorted(METHODS)}")
        try:
            batch_plan(self.trainer, self.cluster.num_workers)
        except Invalid as err:
            raise Invalid(f"trainer.{err.key}", err.message) from err
        if max(self.finetune.candidates) >= self.tokenizer.tables:
            raise Invalid(
                "finetune.candidates",
                f"({self.finetune.candidates}) name tables beyond the "
                f"{self.tokenizer.tables} of tokenizer.tables",
            )
        stride = self.trainer.window_stride
        if stride is not None and stride > self.data.max_history:
            raise Invalid(
                "trainer.window_stride",
                f"({stride}) must be at most data.max_history ({self.data.max_history}): a "
                "window holds at most that many items",
            )
        if 0 < self.evaluate.valid_users < self.cluster.num_workers:
            raise Invalid(
                "evaluate.valid_users",
                f"({self.evaluate.valid_users}) must be 0 (all) or at least "
                f"cluster.num_workers ({self.cluster.num_workers}): each worker validates a slice",
            )
        METHODS[self.method].check(self)


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
    """Merge the schema defaults, the method's defaults, each YAML file, then the overrides,
    and check the result."""
    layers = _layers(files, overrides)
    cfg = OmegaConf.structured(GenrecConfig)
    for layer, where in layers:
        cfg = _merge(cfg, layer, where)
    spec = method_spec(cfg.method)
    cfg = _merge(OmegaConf.structured(GenrecConfig), OmegaConf.create(spec.defaults), "")
    for layer, where in layers:
        cfg = _merge(cfg, layer, where)
    validate(cfg)
    return cfg


def config_from_dict(values: dict) -> DictConfig:
    """A config back from its plain form (`provenance.to_plain`), e.g. in a Ray worker."""
    return _merge(OmegaConf.structured(GenrecConfig), OmegaConf.create(values), "")


def validate(cfg: DictConfig) -> None:
    """Every section's checks, on the config as plain dataclasses."""
    try:
        check_tree(OmegaConf.to_object(cfg))
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from err


def describe(cfg: DictConfig) -> str:
    """Every key of a loaded config with its value and one-line description."""
    lines = []
    for key, f in described_fields(GenrecConfig):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, Container):
            value = OmegaConf.to_container(value)
        if isinstance(value, Enum):
            value = value.name
        shown = json.dumps(value) if value is None or isinstance(value, bool) else value
        lines.append(f"{f'{key}={shown}':<44} # {f.metadata['help']}")
    return "\n".join(lines)
