"""Where every stage's outputs live under `run_dir`, and the metric that selects models.

Each stage writes its own folder; every reader finds a file through these names, so a layer
never reaches into another's module for them.
"""

from pathlib import Path

SELECT_METRIC = "ndcg@10"

# Stage folders under run_dir.
DATA = "data"
TEXT_FEATURES = "features/text"
SASREC = "features/sasrec"
LIGHTGCN = "features/lightgcn"
TOKENIZER = "tokenizer"
TRAIN = "train"
KEPT_TABLES = "tables"
FINETUNE = "finetune"

# Files.
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
ITEM_EMBEDDINGS = "item_embeddings.npy"
USER_EMBEDDINGS = "user_embeddings.npy"
HOLDOUT_USER_EMBEDDINGS = "holdout_user_embeddings.npy"
ITEM_DEGREES = "item_degrees.npy"
META = "meta.json"
CF_METRICS = "metrics.json"
TOKENIZER_REPORT = "report.json"
SEMANTIC_IDS = "semantic_ids.parquet"
TOKENIZER_CHECKPOINT = "tokenizer.pt"
KEPT_CHECKPOINTS = "checkpoints"
TABLES_INDEX = "tables.json"
MODEL = "model.pt"
TRAIN_SUMMARY = "train.json"
METRICS = "metrics.json"
TABLE_CHOICE = "choice.json"
RUN_REPORT = "report.png"
RECOMMENDATIONS = "recommendations.parquet"


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / stage


def semantic_ids(tokenizer_dir: Path, entity: str = "items") -> Path:
    """The ID table of items (or, for MQ, users) a `genrec tokenize` run wrote."""
    return Path(tokenizer_dir) / entity / SEMANTIC_IDS
