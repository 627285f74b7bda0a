"""A synthetic interaction log with structure a sequential model can learn.

Items sit in a category tree (category -> subcategory) with Zipf popularity inside each
subcategory, and every item has a "successor" (the next item of its series). A user's next
item is the successor of the current one, another item of the same subcategory, of a sibling
subcategory, an item of one of the user's favourite subcategories (their taste), or a fresh
popular item elsewhere. The taste persists and drifts slowly (now and then one favourite is
replaced), so the next item depends on more than the current one: a long history tells the
user's favourites, as in real logs, where a first-order chain would make the newest item all
a model can use. Item text names the category, subcategory and series, so text embeddings
carry the same tree. Users are generated in chunks, so a log of 10^8 interactions streams out
without being held in memory.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from genrec.data_pipeline.config import DataConfig, SyntheticConfig
from genrec.data_pipeline.raw_log import RawLog

CATEGORIES = {
    "Kitchen": ["knife", "kettle", "skillet", "blender", "cutting board", "mixing bowl"],
    "Garden": ["hose", "shovel", "planter", "pruner", "seed tray", "watering can"],
    "Audio": ["headphones", "speaker", "microphone", "amplifier", "turntable", "earbuds"],
    "Beauty": ["lipstick", "mascara", "face cream", "nail polish", "shampoo", "perfume"],
    "Office": ["stapler", "notebook", "desk lamp", "label maker", "binder", "fountain pen"],
    "Sports": ["yoga mat", "dumbbell", "tennis racket", "cycling helmet", "running shoe", "tent"],
    "Toys": ["puzzle", "building blocks", "doll", "toy car", "board game", "kite"],
    "Pets": ["dog leash", "cat litter", "bird cage", "aquarium filter", "pet bed", "chew toy"],
    "Tools": ["drill", "wrench set", "screwdriver", "tape measure", "hammer", "circular saw"],
    "Baby": ["stroller", "baby bottle", "diaper bag", "crib sheet", "teether", "baby monitor"],
}
BRANDS = ["Acme", "Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Stark", "Wayne"]
ADJECTIVES = ["compact", "deluxe", "classic", "portable", "premium", "eco", "pro", "mini"]


@dataclass(frozen=True)
class Catalog:
    """The planted item structure: item -> subcategory, successor, and within-leaf rank."""

    leaf_items: np.ndarray  # [num_leaves, per_leaf] item ids, by popularity rank
    item_leaf: np.ndarray  # [num_items]
    successor: np.ndarray  # [num_items]
    rank_table: np.ndarray  # Zipf-distributed ranks, drawn by uniform index (inverse-CDF table)
    leaf_table: np.ndarray  # Zipf-distributed subcategories, likewise
    subcategories: int

    @property
    def num_items(self) -> int:
        return self.item_leaf.size


_TABLE_SIZE = 1 << 16


def _zipf_table(n: int, exponent: float, shuffle: np.random.Generator | None = None) -> np.ndarray:
    """Inverse-CDF lookup table of Zipf weights over n slots (in rank order or shuffled).

    Indexing it with uniform integers samples the distribution without a search per draw.
    """
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    if shuffle is not None:
        weights = weights[shuffle.permutation(n)]
    cdf = np.cumsum(weights) / weights.sum()
    quantiles = (np.arange(_TABLE_SIZE) + 0.5) / _TABLE_SIZE
    return np.minimum(np.searchsorted(cdf, quantiles), n - 1).astype(np.int32)


def build_catalog(cfg: SyntheticConfig) -> Catalog:
    rng = np.random.default_rng(cfg.seed)
    num_leaves = cfg.num_categories * cfg.subcategories
    per_leaf = max(cfg.num_items // num_leaves, 2)
    leaf_items = rng.permutation(num_leaves * per_leaf).astype(np.int32).reshape(num_leaves, -1)
    item_leaf = np.empty(leaf_items.size, dtype=np.int32)
    item_leaf[leaf_items] = np.arange(num_leaves)[:, None]
    series_order = rng.permuted(leaf_items, axis=1)
    successor = np.empty(leaf_items.size, dtype=np.int32)
    successor[series_order] = np.roll(series_order, -1, axis=1)
    return Catalog(
        leaf_items=leaf_items,
        item_leaf=item_leaf,
        successor=successor,
        rank_table=_zipf_table(per_leaf, cfg.zipf_exponent),
        leaf_table=_zipf_table(num_leaves, cfg.zipf_exponent, rng),
        subcategories=cfg.subcategories,
    )


def _pick(table: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    return table[rng.integers(0, _TABLE_SIZE, n)]


def _next_items(
    cat: Catalog,
    cfg: SyntheticConfig,
    cur: np.ndarray,
    taste: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """The next item of each user whose current one is `cur` and favourites `taste` [n, k]."""
    n = cur.size
    leaf = cat.item_leaf[cur]
    u = rng.random(n)
    p1 = cfg.p_successor
    p2 = p1 + cfg.p_same_subcategory
    p3 = p2 + cfg.p_same_category
    p4 = p3 + cfg.p_taste
    sibling = (leaf // cat.subcategories) * cat.subcategories + rng.integers(
        0, cat.subcategories, n
    )
    favourite = taste[np.arange(n), rng.integers(0, taste.shape[1], n)]
    fresh = _pick(cat.leaf_table, rng, n)
    target_leaf = np.select([u < p2, u < p3, u < p4], [leaf, sibling, favourite], fresh)
    chosen = cat.leaf_items[target_leaf, _pick(cat.rank_table, rng, n)]
    return np.where(u < p1, cat.successor[cur], chosen)


def _drift(cat: Catalog, cfg: SyntheticConfig, taste: np.ndarray, rng: np.random.Generator) -> None:
    """Replaces one favourite of a `taste_drift` share of the users, in place."""
    n, k = taste.shape
    moved = np.flatnonzero(rng.random(n) < cfg.taste_drift)
    taste[moved, rng.integers(0, k, moved.size)] = _pick(cat.leaf_table, rng, moved.size)


def generate(cfg: SyntheticConfig) -> Iterator[pa.RecordBatch]:
    """Record batches (user, item) in time order per user, one chunk of users at a time."""
    cat = build_catalog(cfg)
    for start in chunk_starts(cfg):
        yield generate_chunk(cfg, cat, start)


def chunk_starts(cfg: SyntheticConfig) -> range:
    """The first user of each chunk; chunks are seeded apart, so any process can make any one."""
    return range(0, cfg.num_users, cfg.users_per_chunk)


def generate_chunk(cfg: SyntheticConfig, cat: Catalog, start: int) -> pa.RecordBatch:
    """The chunk of users from `start`: (user, item) in time order per user.

    Users of a chunk are ordered by decreasing length, so step t only touches the prefix of
    users still active and the work is proportional to the interactions generated. Each
    user's first item comes from one of their favourite subcategories.
    """
    n = min(cfg.users_per_chunk, cfg.num_users - start)
    rng = np.random.default_rng([cfg.seed, start])
    extra = rng.geometric(1.0 / max(cfg.mean_length - 4.0, 1.0), n) - 1
    lengths = -np.sort(-np.minimum(5 + extra, cfg.max_length))
    active = np.searchsorted(-lengths, -np.arange(int(lengths[0])), side="left")
    taste = _pick(cat.leaf_table, rng, n * cfg.taste_subcategories).reshape(n, -1)
    seq = np.zeros((n, int(lengths[0])), dtype=np.int32)
    seq[:, 0] = cat.leaf_items[taste[:, 0], _pick(cat.rank_table, rng, n)]
    for t in range(1, seq.shape[1]):
        m = active[t]
        _drift(cat, cfg, taste[:m], rng)
        seq[:m, t] = _next_items(cat, cfg, seq[:m, t - 1], taste[:m], rng)
    mask = np.arange(seq.shape[1])[None, :] < lengths[:, None]
    users = np.repeat(np.arange(start, start + n, dtype=np.int64), lengths)
    return pa.record_batch({"user": users, "item": seq[mask].astype(np.int64)})


def item_table(cfg: SyntheticConfig) -> pa.Table:
    """Titles and categories that name each item's place in the category tree."""
    cat = build_catalog(cfg)
    rng = np.random.default_rng([cfg.seed, 1])
    names = list(CATEGORIES)
    leaf_names = []
    for leaf in range(cat.leaf_items.shape[0]):
        top, sub = divmod(leaf, cfg.subcategories)
        nouns = CATEGORIES[names[top % len(names)]]
        top_name = names[top % len(names)] + ("" if top < len(names) else f" {top // len(names)}")
        noun = nouns[sub % len(nouns)] + ("" if sub < len(nouns) else f" type {sub // len(nouns)}")
        leaf_names.append((top_name, noun))
    brands = rng.integers(len(BRANDS), size=cat.num_items).tolist()
    adjectives = rng.integers(len(ADJECTIVES), size=cat.num_items).tolist()
    leaves = [leaf_names[leaf] for leaf in cat.item_leaf.tolist()]
    titles = [
        f"{BRANDS[b]} {ADJECTIVES[a]} {noun} model {item % 97}"
        for item, (b, a, (_, noun)) in enumerate(zip(brands, adjectives, leaves, strict=True))
    ]
    categories = [f"{top}, {noun}" for top, noun in leaves]
    return pa.table(
        {
            "item_id": np.arange(cat.num_items, dtype=np.int64),
            "title": titles,
            "categories": categories,
        }
    )


def read_synthetic(cfg: DataConfig) -> RawLog:
    batches = list(generate(cfg.synthetic))
    log = pa.Table.from_batches(batches)
    return RawLog(
        users=log["user"].combine_chunks(),
        items=log["item"].combine_chunks(),
        times=None,
        item_table=item_table(cfg.synthetic),
        sources=[],
    )
