"""Everything a training checkpoint restores is a named state: an object with `state_dict()` and
`load_state_dict()` of tensors and plain data, saved to `<name>.pt` in the checkpoint folder.

The loop registers its own (progress, best weights), the Ray job adds the data position, and a
method adds what it needs (curriculum weights, a tokenizer, a second optimizer); saving and
restoring go through `save_states` / `load_states` alone, so nothing is restored by hand.
"""

from pathlib import Path
from pickle import UnpicklingError
from typing import Any, Protocol

import torch

from genrec.errors import DataError
from genrec.provenance import atomic_file


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def save_states(folder: Path, states: dict[str, Stateful]) -> None:
    for name, state in states.items():
        with atomic_file(Path(folder) / f"{name}.pt") as tmp:
            torch.save(state.state_dict(), tmp)


def load_states(folder: Path, states: dict[str, Stateful]) -> None:
    for name, state in states.items():
        path = Path(folder) / f"{name}.pt"
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, UnpicklingError) as err:
            raise DataError(str(path), f"cannot restore the checkpoint's '{name}': {err}") from err
        state.load_state_dict(saved)
