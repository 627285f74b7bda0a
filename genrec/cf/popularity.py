"""The baseline every model must beat: rank items by how often they were trained on."""

from genrec.data_pipeline.prepared import PreparedData
from genrec.metrics import count_ranks, ranking_metrics


def popularity_metrics(data: PreparedData) -> dict[str, dict[str, float]]:
    """Valid, test (and held-out users') metrics of ranking every item by its training count."""
    counts = data.item_counts()
    return {
        split.name: ranking_metrics(count_ranks(counts, split.targets))
        for split in (data.valid, data.test, data.holdout)
        if split is not None
    }
