"""Opening input files with errors that name them: missing, empty, gzip, malformed JSON."""

import glob
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


LOG_KINDS = {
    ".csv": ".csv",
    ".tsv": ".tsv",
    ".tab": ".tsv",
    ".txt": ".tsv",
    ".parquet": ".parquet",
    ".pq": ".parquet",
    ".jsonl": ".jsonl",
    ".json": ".jsonl",
    ".ndjson": ".jsonl",
}


def log_kind(path: Path) -> str | None:
    """The format of a log file by its name (`.csv`, `.tsv`, `.parquet`, `.jsonl`), gzip or
    not; None for a name no log has."""
    suffixes = path.suffixes[:-1] if path.suffix == ".gz" else path.suffixes
    return LOG_KINDS.get(suffixes[-1]) if suffixes else None


def log_files(where: str) -> list[Path]:
    """The files of a log given as a file, a folder (its files, hidden ones aside) or a glob,
    in name order; they must all be one format."""
    path = Path(where)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif glob.has_magic(where):
        files = sorted(Path(p) for p in glob.glob(where) if Path(p).is_file())
    else:
        return [existing_file(path)]
    if not files:
        raise DataError(where, "no log files there")
    kinds = {log_kind(p): p for p in files}
    if None in kinds:
        raise DataError(
            str(kinds[None]), "unknown log file type; use .csv, .tsv, .parquet or .jsonl"
        )
    if len(kinds) > 1:
        mixed = ", ".join(f"{kind} ({p.name})" for kind, p in sorted(kinds.items()))
        raise DataError(where, f"mixes log formats: {mixed}; give one format at a time")
    return [existing_file(p) for p in files]


def input_files(cfg: DataConfig) -> list[Path]:
    """Every file a reader of this config reads, so a content hash tells when inputs changed."""
    if cfg.format is DataFormat.synthetic:
        return []
    extra = item_file(cfg)
    logs = log_files(cfg.interactions) if cfg.format is DataFormat.log else None
    return [*(logs or [existing_file(cfg.interactions)]), *([extra] if extra else [])]
