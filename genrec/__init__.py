"""genrec: generative recommendation with learnable item tokenization."""

import os

from genrec.version import __version__

# Ray lines a user cannot act on (read when Ray is imported; a user's own setting wins):
# Ray Train's preemption watcher warns that its constructor arguments live in the object
# store, and Ray Data's split coordinator warns about a deprecated option of its own.
os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", "PreemptionWatcher|exclude_resources")

__all__ = ["__version__", "load"]


def __getattr__(name: str):
    """`genrec.load(run_dir)`: a trained run, ready to recommend (genrec/recommend.py); read
    on first use, so `import genrec` stays light."""
    if name == "load":
        from genrec.recommend import load

        return load
    raise AttributeError(f"module 'genrec' has no attribute {name!r}")
