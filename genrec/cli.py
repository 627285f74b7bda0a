"""`genrec <command> [CONFIG.yaml ...] [key=value ...]`."""

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from genrec.config import load_config
from genrec.data_pipeline.prepare import load_manifest
from genrec.errors import ConfigError, DataError, TrainingFailed

RESULT_COLUMNS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def _print_paths(paths: Path | dict[str, Path]) -> None:
    for path in paths.values() if isinstance(paths, dict) else [paths]:
        print(path)


def _row(name: str, metrics: dict[str, float]) -> str:
    cells = "".join(f"{metrics.get(key, float('nan')):>11.4f}" for key in RESULT_COLUMNS)
    return f"{name:<22}{cells}"


def results_table(result: dict) -> str:
    """Test-split metrics of the model and its baselines, one row each."""
    lines = [f"{'test':<22}" + "".join(f"{key:>11}" for key in RESULT_COLUMNS)]
    lines.append(_row(f"genrec {result['method']}", result["test"]))
    for name, baseline in result["baselines"].items():
        lines.append(_row(name, baseline["test"]))
    return "\n".join(lines)


def _run(cfg: DictConfig) -> None:
    """Every stage in order; stages whose inputs are unchanged are reused."""
    from genrec import stages

    tokenizer = stages.tokenize(cfg)
    manifest = load_manifest(stages.data(cfg))
    report = json.loads((tokenizer / "report.json").read_text())["items"]
    print(
        f"users {manifest['num_users']:,}  items {manifest['num_items']:,}  "
        f"interactions {manifest['num_interactions']:,}  "
        f"train examples {manifest['num_train_examples']:,}  shards {len(manifest['shards'])}\n"
        f"tokenizer {cfg.tokenizer.name.name}: code usage per level "
        f"{[round(level['usage'], 3) for level in report['levels']]}, collisions "
        f"{report['collision_rate_before']:.3f} -> {report['collision_rate_after']:.3f}"
    )
    metrics = stages.evaluate(cfg)
    print(results_table(json.loads(metrics.read_text())))
    print(f"results: {metrics}")


def _evaluate(cfg: DictConfig) -> None:
    from genrec import stages

    metrics = stages.evaluate(cfg)
    print(results_table(json.loads(metrics.read_text())))
    print(f"results: {metrics}")


def _stage(name: str) -> Callable[[DictConfig], None]:
    def command(cfg: DictConfig) -> None:
        from genrec import stages

        _print_paths(getattr(stages, name)(cfg))

    return command


COMMANDS: dict[str, tuple[Callable[[DictConfig], None], str]] = {
    "prepare": (_stage("data"), "read, filter, split and shard the interaction data"),
    "features": (_stage("features"), "item text embeddings, SASRec and LightGCN embeddings"),
    "tokenize": (_stage("tokenize"), "fit the item tokenizer and write semantic IDs"),
    "train": (_stage("train"), "train the generative recommender (trainer.*)"),
    "evaluate": (_evaluate, "beam-search metrics of the trained model (or evaluate.checkpoint)"),
    "run": (_run, "the whole pipeline on the configured data (default: synthetic)"),
}


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """YAML files and key=value overrides, in the order given."""
    files = [a for a in args if a.endswith((".yaml", ".yml")) and "=" not in a]
    overrides = [a for a in args if a not in files]
    return files, overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="genrec", description=__doc__)
    parser.add_argument(
        "command",
        choices=sorted(COMMANDS),
        help="; ".join(f"{name}: {text}" for name, (_, text) in sorted(COMMANDS.items())),
    )
    parser.add_argument("args", nargs="*", help="CONFIG.yaml files, then key=value overrides")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    files, overrides = split_args(ns.args)
    try:
        cfg = load_config(files, overrides)
        COMMANDS[ns.command][0](cfg)
    except (ConfigError, DataError, TrainingFailed) as err:
        print(f"genrec {ns.command}: error: {err}", file=sys.stderr)
        sys.exit(2)
