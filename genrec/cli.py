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


def _features(cfg: DictConfig) -> None:
    from genrec.data_pipeline.prepare import prepare
    from genrec.data_pipeline.text_embeddings import embed_items

    data_dir = prepare(cfg)
    print(embed_items(cfg, data_dir, Path(cfg.run_dir) / "features" / "text"))


COMMANDS: dict[str, tuple[Callable[[DictConfig], None], str]] = {
    "prepare": (_prepare, "read, filter, split and shard the interaction data"),
    "features": (_features, "item text embeddings (prepares the data first if needed)"),
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
