"""A sweep file: a base config and axes of overrides, expanded into named trials whose configs
are all loaded and checked before anything runs.

```yaml
base: [configs/datasets/amazon14_beauty.yaml]   # config files (optional)
overrides: [trainer.epochs=4]                    # key=value for every trial (optional)
grid:                                            # every combination of the values
  trainer.model.d_model: [32, 64, 128]
  trainer.data_fraction: [0.25, 0.5, 1.0]
points:                                          # and/or an explicit list of trials
  - {trainer.model.preset: small, trainer.data_fraction: 1.0}
max_concurrent_trials: null                      # null: as many as the cluster's CPUs allow
tolerance: 0.05                                  # held-out relative error a fit may have
```
"""

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genrec.config import load_config
from genrec.errors import ConfigError
from genrec.provenance import fingerprint, to_plain

KEYS = {"base", "overrides", "grid", "points", "max_concurrent_trials", "tolerance"}
MODEL_AXIS = "trainer.model"  # the model-size axes: it and the keys under it


@dataclass
class Trial:
    name: str
    axes: dict[str, Any]
    cfg: DictConfig
    digest: str  # of the whole config: a finished trial with another digest runs again


@dataclass
class Sweep:
    path: Path
    digest: str  # of the sweep file's content and the command line's overrides
    sweep_dir: Path
    trials: list[Trial]
    axes: list[str]
    max_concurrent_trials: int | None = None
    tolerance: float = 0.05
    model_axes: list[str] = field(default_factory=list)


def _value(value: Any) -> str:
    """An axis value as OmegaConf's dotlist reads it back."""
    if value is None or isinstance(value, bool | list | dict):
        return json.dumps(value)  # JSON is YAML's flow style
    return str(value)


def _label(value: Any) -> str:
    if isinstance(value, dict):
        return "_".join(f"{key}{_label(item)}" for key, item in value.items())
    return ",".join(map(_label, value)) if isinstance(value, list) else str(value)


def _trial_name(index: int, axes: dict[str, Any]) -> str:
    parts = [f"{key.rsplit('.', 1)[-1]}={_label(value)}" for key, value in axes.items()]
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "-".join([f"{index:02d}", *parts]))


def _points(spec: dict, where: str) -> list[dict[str, Any]]:
    grid, points = spec.get("grid") or {}, spec.get("points") or []
    if not isinstance(grid, dict) or not isinstance(points, list):
        raise ConfigError(f"{where}: 'grid' must map keys to lists, 'points' be a list of maps")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid axis '{key}' must be a non-empty list of values")
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    chosen = (combos if grid else []) + [dict(point) for point in points]
    if not chosen or any(not isinstance(point, dict) or not point for point in chosen):
        raise ConfigError(f"{where}: the sweep names no trial: give 'grid' axes or 'points'")
    return chosen


def _sweep_dir(path: Path, overrides: list[str]) -> Path:
    """Absolute: a Tune trial runs in a folder of its own, where a relative path would land."""
    given = [item.split("=", 1)[1] for item in overrides if item.startswith("run_dir=")]
    return Path(given[-1] if given else Path("sweeps") / path.stem).absolute()


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """The sweep with every trial's config loaded (unknown keys, wrong types and invalid
    values fail here, naming the sweep file and the trial)."""
    path = Path(path)
    try:
        text = path.read_text()
        spec = OmegaConf.to_container(OmegaConf.create(text))
    except (OSError, OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read sweep file {path}: {err}") from err
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a sweep file is a map with keys {sorted(KEYS)}")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; a sweep file has {sorted(KEYS)}")
    tolerance = spec.get("tolerance", 0.05)
    if not isinstance(tolerance, int | float) or tolerance <= 0:
        raise ConfigError(f"{path}: 'tolerance' must be a positive number, got {tolerance!r}")
    concurrent = spec.get("max_concurrent_trials")
    if concurrent is not None and (not isinstance(concurrent, int) or concurrent < 1):
        raise ConfigError(f"{path}: 'max_concurrent_trials' must be >= 1 or null")
    sweep_dir = _sweep_dir(path, overrides)
    base, fixed = list(spec.get("base") or []), list(spec.get("overrides") or [])
    trials = []
    for index, axes in enumerate(_points(spec, str(path))):
        name = _trial_name(index, axes)
        settings = [f"{key}={_value(value)}" for key, value in axes.items()]
        run_dir = f"run_dir={sweep_dir / 'trials' / name}"
        try:
            cfg = load_config(base, [*fixed, *overrides, *settings, run_dir])
        except ConfigError as err:
            raise ConfigError(f"{path}: trial {name}: {err}") from err
        trials.append(Trial(name, axes, cfg, fingerprint(to_plain(cfg))))
    axes = list(dict.fromkeys(key for trial in trials for key in trial.axes))
    return Sweep(
        path=path,
        digest=fingerprint(text, list(overrides)),
        sweep_dir=sweep_dir,
        trials=trials,
        axes=axes,
        max_concurrent_trials=concurrent,
        tolerance=float(tolerance),
        model_axes=[key for key in axes if key.split(".")[:2] == MODEL_AXIS.split(".")],
    )
