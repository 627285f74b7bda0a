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
        ("method=hstu", "method"),
        ("trainer.zero_stage=4", "trainer.zero_stage"),
        ("cluster.num_workers=3", "trainer.batch_size"),
        ("trainer.micro_batch_size=100", "trainer.micro_batch_size"),
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


CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize(
    "preset",
    sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "sweeps"),
    ids=lambda p: p.name,
)
def test_every_preset_loads(preset):
    """Each preset's values arrive in the config as written (enums by name)."""
    import yaml
    from omegaconf import OmegaConf

    cfg = load_config([preset])
    written = OmegaConf.create(yaml.safe_load(preset.read_text()))
    for key, value in _leaves(OmegaConf.to_container(written)):
        loaded = OmegaConf.select(cfg, key)
        assert getattr(loaded, "name", loaded) == value, key


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


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


def test_every_key_has_a_description_that_genrec_config_prints():
    from genrec.config import GenrecConfig, describe
    from genrec.schema import described_fields

    keys = dict(described_fields(GenrecConfig))
    assert len(keys) > 100
    undescribed = [key for key, f in keys.items() if not f.metadata.get("help")]
    assert undescribed == []
    printed = describe(load_config([], ["trainer.zero_stage=2"])).splitlines()
    assert len(printed) == len(keys)
    assert any(line.startswith("trainer.zero_stage=2 ") and "ZeRO" in line for line in printed)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.lr=0", r"'trainer.lr' must be > 0"),
        ("trainer.model.preset=huge", r"'trainer.model.preset' is unknown"),
        ("trainer.model.dropout=1.5", r"'trainer.model.dropout' must be in \[0, 1\)"),
        ("trainer.device=gpu0", r"'trainer.device' is not a torch device"),
        ("tokenizer.keep_epochs=300", r"'tokenizer.keep_epochs' \(300, every 1\) spans 300"),
        ("tokenizer.tables=3", r"'tokenizer.tables' \(3\) exceeds the checkpoints kept"),
        ("trainer.curriculum.tau=0", r"'trainer.curriculum.tau' must be > 0"),
        (
            "trainer.curriculum.stage_epochs=[100,101]",
            r"'trainer.curriculum.stage_epochs' \(\[100.0, 101.0\]\) span 201.0 epochs, more",
        ),
        ("tokenizer.settle_lr=0", r"'tokenizer.settle_lr' must be in \(0, 1\]"),
        ("finetune.candidates=[1]", r"'finetune.candidates' \(\[1\]\) name tables beyond"),
        ("cluster.retokenize_actors=0", r"'cluster.retokenize_actors' must be >= 1"),
        ("sasrec.heads=3", r"'sasrec.hidden' \(64\) must be divisible by sasrec.heads"),
        ("cluster.num_workers=0", r"'cluster.num_workers' must be >= 1"),
        ("data.synthetic.p_successor=2", r"'data.synthetic.p_successor' must be in \[0, 1\]"),
        ("evaluate.valid_users=1", r"'evaluate.valid_users' \(1\) must be 0 \(all\) or at least"),
    ],
)
def test_each_section_checks_its_values_at_load_time(override, message):
    overrides = [override, "cluster.num_workers=2"] if "valid_users" in override else [override]
    with pytest.raises(ConfigError, match=message):
        load_config([], overrides)


def test_a_missing_shared_dataset_fails_loudly_in_ci(monkeypatch):
    """CI and a machine with ../shared fail on a missing file, naming it; no silent skip."""
    from _pytest.outcomes import Failed, Skipped

    from tests import conftest

    monkeypatch.setenv("CI", "true")
    with pytest.raises(Failed, match=r"missing shared dataset file .*amazon14_office/nope.json"):
        conftest.shared_dataset("amazon14_office", "nope.json")
    monkeypatch.setenv("CI", "false")
    monkeypatch.setattr(conftest, "SHARED", Path("/nonexistent/shared/datasets"))
    with pytest.raises(Skipped):
        conftest.shared_dataset("amazon14_office", "nope.json")


def test_the_defaults_train_to_the_plateau_with_each_methods_encoder():
    """`genrec run` validates a 2,000-user sample once an epoch at a constant lr until patience
    (gains under 2% do not count) stops it, with the causal encoder; MTGRec's and ETEGRec's
    fixed spans count any gain; TokenRec's history-coded user tokens, which one causal
    pass cannot give, load with the bidirectional encoder; MTGRec's fixed curriculum span keeps
    its decaying schedule."""
    cfg = load_config([], [])
    assert cfg.trainer.model.encoder == "causal" and cfg.trainer.eval_every is None
    assert cfg.evaluate.valid_users == 2000 and cfg.trainer.min_lr_ratio == 1.0
    assert cfg.trainer.epochs == 200 and cfg.trainer.patience == 5
    assert cfg.trainer.min_gain == 0.02
    for fixed_span in ("mtgrec", "etegrec"):
        assert load_config([], [f"method={fixed_span}"]).trainer.min_gain == 0.0
    tokenrec = load_config([], ["method=tokenrec"])
    assert tokenrec.trainer.model.encoder == "bidirectional"
    with pytest.raises(ConfigError, match=r"'trainer.tokenrec.user_tokens' is history"):
        load_config([], ["method=tokenrec", "trainer.model.encoder=causal"])
    assert load_config([], ["method=mtgrec"]).trainer.min_lr_ratio == 0.05
