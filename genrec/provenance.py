"""What made an artifact (config, version, commit); writing it so no crash leaves half of it."""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genrec.version import __version__

_SOURCE_DIR = Path(__file__).resolve().parent


def code_version() -> dict[str, Any]:
    """genrec's version and, when run from a git checkout, its commit and whether it was dirty."""
    info: dict[str, Any] = {"genrec": __version__, "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=_SOURCE_DIR,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=_SOURCE_DIR,
                capture_output=True,
                text=True,
                timeout=10,
            )
            info["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts: equal inputs and config give equal fingerprints."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def made_with(path: str | Path, key: str) -> bool:
    """True when the JSON record at `path` carries fingerprint `key`: its stage can be reused."""
    try:
        return json.loads(Path(path).read_text()).get("fingerprint") == key
    except (OSError, ValueError, AttributeError):
        return False


def file_digest(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` that replaces it only if the block succeeds, so
    readers never see half a file and a failure leaves the previous one (and no litter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces `final` only if the block succeeds.

    A previous `final` survives any failure; on success it is swapped out, then removed. The
    scratch is named for its process, so one left by a killed process is removed next time.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(final)
    scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-{os.getpid()}-"))
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    os.chmod(scratch, 0o755)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(scratch, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_orphans(final: Path) -> None:
    """Scratch folders of `final` whose process is gone (killed before it could clean up)."""
    for scratch in final.parent.glob(f".{final.name}.tmp-*-*"):
        pid = scratch.name[len(f".{final.name}.tmp-") :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(scratch, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (enums by name), for artifacts to record."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
