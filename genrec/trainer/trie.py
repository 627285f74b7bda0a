"""The valid semantic IDs as a prefix trie stored in flat arrays, for constrained decoding.

Depth d holds the distinct d-code prefixes in sorted order, so the children of a node are one
contiguous run of the next depth (CSR): node i at depth d has children
`child_start[d][i] : child_start[d][i + 1]` at depth d + 1, whose last codes are `code[d + 1]`.
Decoding reads children with index arithmetic alone, for every beam of every user at once.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class ItemTrie:
    child_start: list[Tensor]
    code: list[Tensor]
    max_children: list[int]
    leaf_item: Tensor

    @classmethod
    def from_codes(cls, codes: np.ndarray | Tensor) -> "ItemTrie":
        """Builds the trie of items' full IDs [num_items, L+1]; IDs must be unique."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] == 0:
            raise ValueError(
                f"item codes must be a non-empty [items, L+1] array, got {codes.shape}"
            )
        order = np.lexsort(codes.T[::-1])
        ranked = codes[order]
        new = np.ones((len(ranked), codes.shape[1]), dtype=bool)
        new[1:] = np.logical_or.accumulate(ranked[1:] != ranked[:-1], axis=1)
        if not new[:, -1].all():
            i = int(np.flatnonzero(~new[:, -1])[0])
            raise ValueError(
                f"items {order[i - 1]} and {order[i]} share the semantic ID {ranked[i].tolist()}"
            )
        node = np.cumsum(new, axis=0) - 1
        child_start, code, max_children = [], [np.zeros(1, dtype=np.int64)], []
        parents = np.zeros(len(ranked), dtype=np.int64)
        for depth in range(codes.shape[1]):
            rows = np.flatnonzero(new[:, depth])
            counts = np.bincount(parents[rows], minlength=int(parents.max()) + 1)
            child_start.append(torch.from_numpy(np.concatenate([[0], np.cumsum(counts)])))
            code.append(ranked[rows, depth])
            max_children.append(int(counts.max()))
            parents = node[:, depth]
        return cls(
            child_start=child_start,
            code=[torch.from_numpy(c) for c in code],
            max_children=max_children,
            leaf_item=torch.from_numpy(order),
        )

    @property
    def depth(self) -> int:
        return len(self.child_start)

    @property
    def num_items(self) -> int:
        return self.leaf_item.numel()

    def to(self, device: torch.device | str) -> "ItemTrie":
        return ItemTrie(
            child_start=[t.to(device) for t in self.child_start],
            code=[t.to(device) for t in self.code],
            max_children=self.max_children,
            leaf_item=self.leaf_item.to(device),
        )

    def children(self, depth: int, node: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Children of `node` [...] at `depth`: (child node, its code, valid), each [..., max].

        Rows with fewer children than the maximum are padded; padded slots are not valid.
        """
        start = self.child_start[depth]
        slot = torch.arange(self.max_children[depth], device=node.device)
        child = start[node][..., None] + slot
        valid = child < start[node + 1][..., None]
        child = torch.where(valid, child, start[node][..., None])
        return child, self.code[depth + 1][child], valid
