"""Semantic IDs as a stack of G tables: each example is read in its own group, and G = 2
identical tables train and decode exactly as one."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from genrec.errors import DataError
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.objective import Batch, CodeGeneration
from genrec.trainer.ranking import BeamSearchRanker

LEVELS, K, ITEMS = 2, 6, 30


def item_table(seed: int) -> np.ndarray:
    """Unique IDs: L codes plus a dedup code."""
    rng = np.random.default_rng(seed)
    pairs = rng.choice(K * K, ITEMS, replace=False)
    return np.column_stack([pairs // K, pairs % K, np.zeros(ITEMS, dtype=np.int64)])


def model() -> GenerativeRecommender:
    torch.manual_seed(0)
    config = ModelConfig.preset(
        "tiny", num_levels=LEVELS, codebook_size=K, dedup_size=1, dropout=0.0, max_history_items=6
    )
    return GenerativeRecommender(config).eval()


def rows(groups: torch.Tensor) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    history = torch.randint(0, ITEMS, (groups.numel(), 5), generator=generator)
    history[:3, :2] = -1
    return {
        "user": torch.arange(groups.numel()),
        "history": history,
        "target": torch.randint(0, ITEMS, (groups.numel(),), generator=generator),
        "group": groups,
    }


def test_each_example_reads_its_own_group():
    a, b = item_table(0), item_table(1)
    codes = ItemCodes(np.stack([a, b]), K)
    items = torch.tensor([[3, -1], [4, 5]])
    looked_up = codes(items, torch.tensor([0, 1]))
    assert looked_up[0, 0].tolist() == a[3].tolist() and looked_up[0, 1].tolist() == [-1] * 3
    assert looked_up[1].tolist() == b[[4, 5]].tolist()
    assert codes(torch.tensor([7, 8]), torch.tensor([1, 0])).tolist() == [
        b[7].tolist(),
        a[8].tolist(),
    ]
    assert (codes.num_groups, codes.num_items, codes.num_levels) == (2, ITEMS, LEVELS)


def test_two_identical_tables_train_and_decode_as_one():
    table = item_table(0)
    one, two = ItemCodes(table, K), ItemCodes(np.stack([table, table]), K)
    net, objective = model(), CodeGeneration(temperature=0.8)
    mixed = torch.tensor([0, 1] * 8)
    with torch.no_grad():
        loss_one = objective(net, Batch.coded(rows(torch.zeros(16, dtype=torch.long)), one, "cpu"))
        loss_two = objective(net, Batch.coded(rows(mixed), two, "cpu"))
    assert loss_two[0].item() == pytest.approx(loss_one[0].item(), abs=1e-6)
    batch = Batch.coded(rows(mixed), two, "cpu")
    with torch.no_grad():
        top_one = BeamSearchRanker.over(one).top_k(net, batch, 10)[0]
        top_two = BeamSearchRanker.over(two).top_k(net, batch, 10)[0]
    assert torch.equal(top_one, top_two) and (top_one >= 0).all()


def test_tables_of_different_id_lengths_are_refused(tmp_path):
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    for path, width in zip(paths, (3, 4), strict=True):
        codes = [[i % K] * (width - 1) + [i // K] for i in range(ITEMS)]
        pq.write_table(pa.table({"item": list(range(ITEMS)), "codes": codes}), path)
    with pytest.raises(DataError, match=r"b.parquet: IDs of 4 codes, where .*a.parquet has 3"):
        ItemCodes.load(paths, ITEMS, K)
