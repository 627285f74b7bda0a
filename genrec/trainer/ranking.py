"""How a model's recommendations are produced for evaluation: the method's output side.

Generative methods decode valid IDs by constrained beam search; TokenRec scores item vectors
instead (genrec/methods/tokenrec/preference.py). Evaluation asks for each user's top-k items,
best first; recommendation also for their scores.
"""

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from genrec.trainer.beam_search import beam_search
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender
from genrec.trainer.objective import Batch
from genrec.trainer.trie import ItemTrie


class Ranker(Protocol):
    def top_k(self, model: torch.nn.Module, batch: Batch, k: int) -> tuple[Tensor, Tensor]:
        """(item ids, scores), each [B, k], for the batch's histories, best first; item -1
        (score -inf) where fewer than k items can be ranked."""


@dataclass
class BeamSearchRanker:
    """Exact beam search over the trie of group 0's IDs."""

    trie: ItemTrie
    first_code_weight: float = 1.0  # the first code's share of an ID's score (beam_search)

    @classmethod
    def over(cls, codes: ItemCodes) -> "BeamSearchRanker":
        trie = ItemTrie.from_codes(codes.group(0).cpu())
        return cls(trie.to(codes.table.device))

    def top_k(self, model: GenerativeRecommender, batch: Batch, k: int) -> tuple[Tensor, Tensor]:
        """Scores are the IDs' summed code log-probabilities."""
        return beam_search(
            model, self.trie, batch.history_codes, k, batch.user, self.first_code_weight
        )
