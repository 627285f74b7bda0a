from pathlib import Path

import pytest
import torch

from genrec.config import load_config

# Test models are tiny: one thread is faster than two contending ones, and timings stay stable
# when the machine is shared.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def shared_dataset(*parts: str) -> Path:
    """A file under ../shared/datasets, or a clean skip where that folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared datasets)")
    return path


@pytest.fixture
def make_config(tmp_path):
    """A resolved config whose run_dir is this test's temporary folder."""

    def make(*overrides: str, files: tuple[str, ...] = ()):
        return load_config(list(files), [f"run_dir={tmp_path / 'run'}", *overrides])

    return make
