"""How a batch becomes a loss: the part of training that differs between methods.

The loop hands every method the same `Batch` (items as ids and as codes of the group each
example is read in) and minimises the loss it returns; the named terms go to TensorBoard.
"""

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import code_cross_entropy

# The names of the recommender's own loss term, whatever else a method adds (the run's
# training-loss curve follows it; ETEGRec's tokenizer steps have none).
MODEL_TERMS = ("generation", "retrieval")


@dataclass
class Batch:
    """One micro-batch on the device: a target per history, or, for the causal encoder, a
    window per row whose every item predicts the next (target [B, H], -1 where untrained)."""

    user: Tensor  # [B]
    history: Tensor  # [B, H] item ids, -1 before the oldest
    target: Tensor  # [B] (or [B, H]) item ids
    group: Tensor  # [B] code group of each example
    history_codes: Tensor  # [B, H, L+1]
    target_codes: Tensor  # [B, L+1] (or [B, H, L+1])

    @property
    def every_prefix(self) -> bool:
        return self.target.dim() == 2

    @property
    def prefixes(self) -> Tensor | None:
        """The windows' trained prefixes [B, H], which the model reads out (None: one each)."""
        return self.target >= 0 if self.every_prefix else None

    def per_target(self, values: Tensor) -> Tensor:
        """A batch tensor per target ([B, ...], or [B, H, ...] for windows) as one row per
        trained target, the order of the model's outputs."""
        return values[self.prefixes] if self.every_prefix else values

    @classmethod
    def coded(
        cls, rows: dict[str, Tensor], codes: ItemCodes, device: torch.device | str
    ) -> "Batch":
        """Moves a collated batch to the device and looks its items up in their groups."""
        user, history, target = (
            rows[k].to(device, non_blocking=True) for k in ("user", "history", "target")
        )
        group = rows["group"].to(device, non_blocking=True)
        return cls(user, history, target, group, codes(history, group), codes(target, group))


def targets_in(rows: dict[str, Tensor]) -> int:
    """The targets a collated batch trains: one per row, or a window's trained ones."""
    return int((rows["target"] >= 0).sum())


class Objective(Protocol):
    def __call__(self, model: torch.nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimise and its named terms (detached values are fine)."""


@dataclass(frozen=True)
class CodeGeneration:
    """Cross-entropy of the target's codes, each step over its own code set. A temperature
    below 1 is LETTER's ranking-guided loss: sharper logits weigh hard negatives more."""

    temperature: float = 1.0

    def __call__(self, model: torch.nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(batch.history_codes, batch.target_codes, batch.user)
        codes = batch.per_target(batch.target_codes)
        loss = code_cross_entropy(logits, codes, self.temperature)
        return loss, {"generation": loss.detach()}
