"""The baseline every model must beat: rank items by how often they were trained on."""

import torch

from genrec.data_pipeline.prepared import PreparedData
from genrec.metrics import full_ranking_metrics


def popularity_metrics(data: PreparedData) -> dict[str, dict[str, float]]:
    """Valid, test (and held-out users') metrics of ranking every item by its training count."""
    counts = torch.as_tensor(data.item_counts(), dtype=torch.float32)
    return {
        split.name: full_ranking_metrics(lambda rows: counts.expand(rows.size, -1), split.targets)
        for split in (data.valid, data.test, data.holdout)
        if split is not None
    }
