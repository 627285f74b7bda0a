"""`genrec <command> [CONFIG.yaml ...] [key=value ...]`."""

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from genrec.config import load_config
from genrec.errors import ConfigError, DataError


def _prepare(cfg: DictConfig) -> None:
    from genrec.data_pipeline.prepare import prepare

    print(prepare(cfg))


def _features(cfg: DictConfig) -> Path:
    from genrec.data_pipeline.prepare import prepare
    from genrec.data_pipeline.text_embeddings import embed_items

    out = embed_items(cfg, prepare(cfg), Path(cfg.run_dir) / "features" / "text")
    print(out)
    return out


def _run(cfg: DictConfig) -> None:
    """Every stage in order; stages whose inputs are unchanged are reused."""
    from genrec.data_pipeline.prepare import load_manifest

    features = _features(cfg)
    manifest = load_manifest(Path(cfg.run_dir) / "data")
    print(f"users {manifest['num_users']:,}  items {manifest['num_items']:,}  "
          f"interactions {manifest['num_interactions']:,}  "
          f"train examples {manifest['num_train_examples']:,}  "
          f"shards {len(manifest['shards'])}  text embeddings {features / 'embeddings.npy'}")


COMMANDS: dict[str, tuple[Callable[[DictConfig], object], str]] = {
    "prepare": (_prepare, "read, filter, split and shard the interaction data"),
    "features": (_features, "item text embeddings (prepares the data first if needed)"),
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
    except (ConfigError, DataError) as err:
        print(f"genrec {ns.command}: error: {err}", file=sys.stderr)
        sys.exit(2)
