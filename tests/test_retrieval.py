"""Retrieval over item vectors: exact chunked top-k and the approximate (faiss HNSW) index."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genrec.trainer.retrieval import (
    ApproximateIndex,
    ExactIndex,
    Similarity,
    recall_against_exact,
)


@pytest.mark.parametrize("similarity", list(Similarity))
def test_exact_top_k_equals_scoring_every_item_at_once(similarity):
    torch.manual_seed(0)
    items, queries = torch.randn(1000, 16) * 3, torch.randn(7, 16)
    index = ExactIndex(items, similarity)
    scores, ids = index.search(queries, 10, block=64)
    if similarity is Similarity.cosine:
        full = F.normalize(queries, dim=-1) @ F.normalize(items, dim=-1).T
    else:
        full = queries @ items.T
    expected = full.topk(10, dim=1)
    assert torch.equal(ids, expected.indices)
    assert torch.allclose(scores, expected.values, atol=1e-5)
    # One block or many, the same ranking.
    assert torch.equal(index.search(queries, 10, block=4096)[1], ids)


def test_k_beyond_the_catalogue_is_refused():
    with pytest.raises(ValueError, match="top-k of 11 asked of a catalogue of 10 items"):
        ExactIndex(torch.randn(10, 4)).search(torch.randn(2, 4), 11)


def test_the_approximate_index_finds_the_exact_top_10_and_knows_its_items():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 32))
    items = (centres[rng.integers(50, size=20_000)] + rng.normal(size=(20_000, 32))).astype(
        np.float32
    )
    queries = torch.from_numpy(items[rng.choice(20_000, 200, replace=False)]) + 0.1
    index = ApproximateIndex(items)
    _, exact = ExactIndex(torch.from_numpy(items)).search(queries, 10)
    _, found = index.search(queries, 10)
    recall = recall_against_exact(found, exact)
    print(f"approximate top-10 recall against exact: {recall:.4f}")
    assert recall >= 0.95
    index.check_items(items)
    with pytest.raises(ValueError, match="built for other item vectors"):
        index.check_items(items[:-1])


def test_the_approximate_index_is_built_once_for_its_vectors(tmp_path, monkeypatch):
    """Saved beside the vectors on its first build, read back after (no second build); other
    vectors get their own file."""
    import faiss

    items = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    queries = torch.from_numpy(items[:5])
    first = ApproximateIndex(items, folder=tmp_path)
    assert len(list(tmp_path.glob("hnsw-cosine-32-*.faiss"))) == 1
    built = []
    monkeypatch.setattr(faiss.IndexHNSWFlat, "add", lambda *args: built.append(args))
    again = ApproximateIndex(items, folder=tmp_path)
    assert not built and again.num_items == 300
    assert torch.equal(again.search(queries, 10)[1], first.search(queries, 10)[1])
    monkeypatch.undo()
    ApproximateIndex(items[:-1], folder=tmp_path)
    assert len(list(tmp_path.glob("hnsw-cosine-32-*.faiss"))) == 2
