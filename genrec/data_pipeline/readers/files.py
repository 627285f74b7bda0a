"""Opening input files with errors that name them: missing, empty, gzip, malformed JSON."""

import gzip
import json
from pathlib import Path
from typing import IO, Any

from genrec.data_pipeline.config import DataConfig, DataFormat
from genrec.errors import DataError


def existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "file not found")
    if path.stat().st_size == 0:
        raise DataError(str(path), "file is empty")
    return path


def open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    """Plain or gzip-compressed text."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding)
    return open(path, encoding=encoding)


def load_json(path: Path) -> Any:
    try:
        with open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(
            str(path), f"line {err.lineno}, column {err.colno}: invalid JSON ({err.msg})"
        ) from err
    except UnicodeDecodeError as err:
        raise DataError(str(path), f"not UTF-8 text ({err})") from err


def item_file(cfg: DataConfig) -> Path | None:
    """`data.items`, or else the metadata file that sits beside the interactions in this format."""
    if cfg.items:
        return existing_file(cfg.items)
    if not cfg.interactions:
        return None
    inter = Path(cfg.interactions)
    companions = {
        DataFormat.lcrec: inter.with_name(inter.name.replace(".inter.json", ".item.json")),
        DataFormat.movielens: inter.with_name("movies" + inter.suffix),
    }
    candidate = companions.get(cfg.format)
    return (
        candidate if candidate is not None and candidate != inter and candidate.is_file() else None
    )


def input_files(cfg: DataConfig) -> list[Path]:
    """Every file a reader of this config reads, so a content hash tells when inputs changed."""
    if cfg.format is DataFormat.synthetic:
        return []
    extra = item_file(cfg)
    return [existing_file(cfg.interactions), *([extra] if extra else [])]
