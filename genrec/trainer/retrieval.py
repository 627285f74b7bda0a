"""Nearest-neighbour retrieval over item vectors: TokenRec's output side.

A retrieval model turns each user into one preference vector; its recommendations are the
items whose vectors score highest against it. `ExactIndex` scores every item, a block of the
catalogue at a time on the device (memory B x block, whatever the catalogue), and keeps a
running top-k. `ApproximateIndex` (faiss HNSW, the optional extra `genrec[ann]`) serves
catalogues too large to score exhaustively per query batch, built once for a set of vectors
and saved beside them; `recall_against_exact` says how much of the exact top-k it finds.
Both prepare the item vectors once, not per query batch.
"""

import hashlib
from enum import Enum
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genrec.provenance import atomic_file

BLOCK_ITEMS = 1 << 17


class Similarity(Enum):
    cosine = "cosine"
    dot = "dot"


class Search(Enum):
    """Exact scoring of every item, or faiss HNSW for catalogues too large for it."""

    exact = "exact"
    hnsw = "hnsw"


def faiss_missing() -> str | None:
    """Why the approximate index cannot be built here, or None when it can."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "approximate retrieval needs faiss: pip install 'genrec[ann]'"
    return None


def _check_k(k: int, num_items: int) -> None:
    if not 1 <= k <= num_items:
        raise ValueError(f"top-k of {k} asked of a catalogue of {num_items} items")


def _prepared(vectors: Tensor, similarity: Similarity) -> Tensor:
    vectors = vectors.float()
    return F.normalize(vectors, dim=-1) if similarity is Similarity.cosine else vectors


class ExactIndex:
    """Every item scored against every query, the catalogue `block` items at a time, on the
    device the item vectors are on; the vectors are prepared (normalised for cosine) once."""

    def __init__(self, items: Tensor, similarity: Similarity = Similarity.cosine):
        self.items, self.similarity = _prepared(items, similarity), similarity

    @property
    def num_items(self) -> int:
        return len(self.items)

    def search(self, queries: Tensor, k: int, block: int = BLOCK_ITEMS) -> tuple[Tensor, Tensor]:
        """(scores, item ids), each [B, k], best first."""
        _check_k(k, self.num_items)
        queries = _prepared(queries.to(self.items.device), self.similarity)
        best_scores = queries.new_empty(len(queries), 0)
        best_ids = torch.empty(len(queries), 0, dtype=torch.long, device=self.items.device)
        for start in range(0, self.num_items, block):
            scores = queries @ self.items[start : start + block].T
            top = scores.topk(min(k, scores.size(1)), dim=1)
            merged = torch.cat([best_scores, top.values], dim=1)
            ids = torch.cat([best_ids, top.indices + start], dim=1)
            best_scores, order = merged.topk(min(k, merged.size(1)), dim=1)
            best_ids = ids.gather(1, order)
        return best_scores, best_ids


def vectors_digest(items: np.ndarray) -> str:
    """What an index records of the vectors it was built on, to refuse other items."""
    items = np.ascontiguousarray(items, dtype=np.float32)
    return hashlib.sha256(items.tobytes() + str(items.shape).encode()).hexdigest()


class ApproximateIndex:
    """An HNSW graph over the item vectors (inner product on normalised vectors for cosine)."""

    def __init__(
        self,
        items: np.ndarray,
        similarity: Similarity = Similarity.cosine,
        neighbours: int = 32,
        search_depth: int = 128,
        folder: Path | None = None,
    ):
        """Built over `items`, or read back from `folder` where an index of the same vectors,
        similarity and graph degree was saved (and saved there once built)."""
        if missing := faiss_missing():
            raise ImportError(missing)
        import faiss

        self.similarity, self.digest = similarity, vectors_digest(items)
        path = None
        if folder is not None:
            name = f"hnsw-{similarity.value}-{neighbours}-{self.digest[:16]}.faiss"
            path = Path(folder) / name
        if path is not None and path.exists():
            self.index = faiss.read_index(str(path))
        else:
            vectors = _prepared(torch.from_numpy(np.asarray(items)), similarity).numpy()
            self.index = faiss.IndexHNSWFlat(
                vectors.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT
            )
            self.index.add(vectors)
            if path is not None:
                with atomic_file(path) as tmp:
                    faiss.write_index(self.index, str(tmp))
        self.index.hnsw.efSearch = search_depth

    @property
    def num_items(self) -> int:
        return self.index.ntotal

    def check_items(self, items: np.ndarray) -> None:
        """Refuses to serve other items than those the index was built on."""
        if vectors_digest(items) != self.digest:
            raise ValueError(
                f"the index was built for other item vectors than these {len(items)}; rebuild it"
            )

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(scores, item ids) [B, k], best first, as `exact_top_k` gives them."""
        _check_k(k, self.num_items)
        prepared = _prepared(queries.detach().cpu(), self.similarity).numpy()
        scores, ids = self.index.search(prepared, k)
        return torch.from_numpy(scores), torch.from_numpy(ids).long()


def recall_against_exact(found: Tensor, exact: Tensor) -> float:
    """The share of the exact top-k ids [B, k] that `found` [B, k] holds, over all queries."""
    hits = (found[:, :, None] == exact[:, None, :]).any(1).sum()
    return float(hits) / exact.numel()
