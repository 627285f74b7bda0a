from pathlib import Path

import pytest

from genrec.config import load_config
from genrec.data_pipeline.config import DataFormat
from genrec.errors import ConfigError
from genrec.provenance import to_plain


def test_defaults_are_the_synthetic_dataset():
    cfg = load_config()
    assert cfg.data.format is DataFormat.synthetic
    assert to_plain(cfg)["data"]["format"] == "synthetic"


def test_yaml_then_overrides_in_order(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("data:\n  format: lcrec\n  interactions: a.json\n  max_history: 20\n")
    cfg = load_config([preset], ["data.max_history=7"])
    assert cfg.data.format is DataFormat.lcrec
    assert cfg.data.interactions == "a.json"
    assert cfg.data.max_history == 7


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("data.bogus=1", "data.bogus"),
        ("bogus=1", "bogus"),
        ("data.max_history=abc", "data.max_history"),
        ("data.format=parquet_files", "data.format"),
        ("data.min_user_interactions=2", "data.min_user_interactions"),
        ("data.users_per_shard=0", "data.users_per_shard"),
    ],
)
def test_bad_override_names_the_key(override, names):
    with pytest.raises(ConfigError, match=f"'{names}'"):
        load_config([], [override])


def test_bad_key_in_yaml_names_file_and_key(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("data:\n  min_user_interaction: 5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*data\.min_user_interaction"):
        load_config([preset])


def test_real_formats_need_an_interactions_path():
    with pytest.raises(ConfigError, match=r"data\.interactions"):
        load_config([], ["data.format=lcrec"])


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["data.format"])


@pytest.mark.parametrize(
    "preset", sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml")), ids=lambda p: p.name
)
def test_every_preset_loads(preset):
    load_config([preset])


def test_the_kuberay_example_submits_a_valid_genrec_command():
    import shlex

    import yaml

    from genrec.cli import split_args

    example = Path(__file__).parents[1] / "genrec/cluster/examples/kuberay-rayjob.yaml"
    command = shlex.split(yaml.safe_load(example.read_text())["spec"]["entrypoint"])
    assert command[:2] == ["genrec", "train"]
    files, overrides = split_args(command[2:])
    cfg = load_config([Path(__file__).parents[1] / f for f in files], overrides)
    assert cfg.cluster.num_workers == 8 and cfg.cluster.use_gpu and cfg.trainer.zero_stage == 2
