"""`genrec <command> [CONFIG.yaml ...] [key=value ...]`."""

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig

from genrec import artifacts
from genrec.config import describe, load_config
from genrec.data_pipeline.prepare import load_manifest
from genrec.errors import ConfigError, user_error
from genrec.methods import method_spec
from genrec.tokenizers.config import TokenizerName

RESULT_COLUMNS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def _row(name: str, metrics: dict[str, float]) -> str:
    cells = "".join(f"{metrics.get(key, float('nan')):>11.4f}" for key in RESULT_COLUMNS)
    return f"{name:<22}{cells}"


def results_table(result: dict) -> str:
    """Test-split metrics of the model and its baselines, one row each; then those on users
    held out of training, where the data has them (baselines that can rank them)."""
    lines = []
    for split in ("test", "holdout"):
        if split not in result:
            continue
        lines.append(f"{split:<22}" + "".join(f"{key:>11}" for key in RESULT_COLUMNS))
        lines.append(_row(f"genrec {result['method']}", result[split]))
        for name, baseline in result["baselines"].items():
            if split in baseline:
                lines.append(_row(name, baseline[split]))
    return "\n".join(lines)


def data_summary(cfg: DictConfig, data_dir: Path) -> str:
    manifest = load_manifest(data_dir)
    return (
        f"users {manifest['num_users']:,}  items {manifest['num_items']:,}  "
        f"interactions {manifest['num_interactions']:,}  "
        f"train examples {manifest['num_train_examples']:,}  shards {len(manifest['shards'])}"
    )


def tokenizer_summary(cfg: DictConfig, tokenizer_dir: Path) -> str:
    from genrec import stages

    report = json.loads((tokenizer_dir / artifacts.TOKENIZER_REPORT).read_text())["items"]
    mq = cfg.tokenizer.name is TokenizerName.mq
    source = "lightgcn" if mq else stages.item_vectors(cfg).name
    return (
        f"tokenizer {cfg.tokenizer.name.name} over {source} vectors: "
        f"code usage per level {[round(level['usage'], 3) for level in report['levels']]}, "
        f"collisions {report['collision_rate_before']:.3f} -> "
        f"{report['collision_rate_after']:.3f}"
    )


def metrics_summary(cfg: DictConfig, metrics: Path) -> str:
    table = results_table(json.loads(metrics.read_text()))
    return f"{table}\nresults: {metrics}\nreport: {Path(cfg.run_dir) / artifacts.RUN_REPORT}"


def recommendations_summary(cfg: DictConfig, out: Path) -> str:
    table = pq.read_table(out, columns=["user"])
    users = len(pc.unique(table["user"]))
    return f"recommendations: {out} ({users:,} users, top {cfg.recommend.k})"


def _span(shares: list[float]) -> str:
    return f"{min(shares):.1%}-{max(shares):.1%}" if shares else "-"


def tables_summary(cfg: DictConfig, tables_dir: Path) -> str:
    index = json.loads((tables_dir / artifacts.TABLES_INDEX).read_text())
    report = artifacts.stage_dir(cfg.run_dir, artifacts.TOKENIZER) / artifacts.TOKENIZER_REPORT
    changes = json.loads(report.read_text())["items"]["adjacent_epoch_changes"]
    return (
        f"tables {len(index['tables'])} of {index['rows']:,} items (epochs "
        f"{index['tables'][-1]['epoch']}-{index['tables'][0]['epoch']}); adjacent epochs change "
        f"first code {_span([c['first_code'] for c in changes])}, "
        f"ID {_span([c['id'] for c in changes])}"
    )


def recoding_summary(cfg: DictConfig, train_dir: Path) -> str | None:
    """ETEGRec: how much each re-coding after a tokenizer epoch changed the IDs."""
    changes = json.loads((train_dir / artifacts.TRAIN_SUMMARY).read_text()).get("recoded")
    if not changes:
        return None
    shares = ", ".join(f"{change['id']:.1%}" for change in changes)
    return (
        f"re-coded after {len(changes)} tokenizer epochs: IDs changed {shares}; first codes "
        f"{_span([change['first_code'] for change in changes])}"
    )


SUMMARIES: dict[str, Callable[[DictConfig, Path], str | None]] = {
    "data": data_summary,
    "tokenize": tokenizer_summary,
    "retokenize": tables_summary,
    "train": recoding_summary,
    "evaluate": metrics_summary,
    "recommend": recommendations_summary,
}


def _run(cfg: DictConfig) -> None:
    """The method's stages in order, each summarised as it finishes; unchanged ones reused."""
    from genrec import stages

    for stage in method_spec(cfg.method).stages:
        out = getattr(stages, stage)(cfg)
        summary = SUMMARIES[stage](cfg, out) if stage in SUMMARIES else None
        if summary:
            print(summary, flush=True)


def _stage(name: str) -> Callable[[DictConfig], None]:
    def command(cfg: DictConfig) -> None:
        from genrec import stages

        out = getattr(stages, name)(cfg)
        summary = SUMMARIES[name](cfg, out) if name in SUMMARIES else None
        if summary:
            print(summary)
        else:
            for path in out.values() if isinstance(out, dict) else [out]:
                print(path)

    return command


COMMANDS: dict[str, tuple[Callable[[DictConfig], None], str]] = {
    "prepare": (_stage("data"), "read, filter, split and shard the interaction data"),
    "features": (_stage("features"), "item text embeddings, SASRec and LightGCN embeddings"),
    "tokenize": (_stage("tokenize"), "fit the item tokenizer and write semantic IDs"),
    "retokenize": (
        _stage("retokenize"),
        "code the items with every kept tokenizer checkpoint on a Ray actor pool",
    ),
    "train": (_stage("train"), "train the generative recommender (trainer.*)"),
    "finetune": (
        _stage("finetune"),
        "fine-tune the pre-trained model on fixed IDs (MTGRec, ETEGRec)",
    ),
    "evaluate": (_stage("evaluate"), "test metrics of the trained model (or evaluate.checkpoint)"),
    "recommend": (
        _stage("recommend"),
        "top-k items of every user (or recommend.users) to Parquet, from the trained run",
    ),
    "run": (_run, "the method's whole pipeline (default: TIGER on synthetic data)"),
    "config": (lambda cfg: print(describe(cfg)), "print every config key: value and meaning"),
}
SWEEP_HELP = "Ray Tune trials over a sweep file's axes, their accounting and scaling-law fits"


def _sweep(files: list[str], overrides: list[str]) -> None:
    """`genrec sweep SWEEP.yaml [key=value ...]`: the overrides apply to every trial."""
    from genrec.cluster.sweep import run_sweep
    from genrec.cluster.sweep_spec import load_sweep

    if len(files) != 1:
        raise ConfigError(f"genrec sweep takes one sweep file (YAML), got {files or 'none'}")
    print(run_sweep(load_sweep(files[0], overrides)))


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """YAML files and key=value overrides, in the order given."""
    files = [a for a in args if a.endswith((".yaml", ".yml")) and "=" not in a]
    overrides = [a for a in args if a not in files]
    return files, overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="genrec",
        description=__doc__,
        epilog="`genrec config [CONFIG.yaml ...] [key=value ...]` lists every key with its "
        "value and meaning.",
    )
    helps = {name: text for name, (_, text) in COMMANDS.items()} | {"sweep": SWEEP_HELP}
    parser.add_argument(
        "command",
        choices=sorted(helps),
        help="; ".join(f"{name}: {text}" for name, text in sorted(helps.items())),
    )
    parser.add_argument("args", nargs="*", help="CONFIG.yaml files, then key=value overrides")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    files, overrides = split_args(ns.args)
    try:
        if ns.command == "sweep":
            _sweep(files, overrides)
        else:
            COMMANDS[ns.command][0](load_config(files, overrides))
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"genrec {ns.command}: error: {cause}", file=sys.stderr)
        sys.exit(2)
