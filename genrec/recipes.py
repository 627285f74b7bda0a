"""Method recipes: each paper is a handful of settings over the shared stages.

A recipe is applied under the user's YAML files and overrides, so `method=letter
trainer.temperature=1.1` keeps the user's temperature and the rest of LETTER.
"""

from enum import Enum
from typing import Any


class Method(Enum):
    tiger = "tiger"
    letter = "letter"


RECIPES: dict[Method, dict[str, Any]] = {
    # TIGER: RQ-VAE over item-text embeddings, an extra code to split collisions, plain CE.
    Method.tiger: {
        "tokenizer": {"name": "rqvae", "input": "text", "collisions": "dedup"},
        "trainer": {"temperature": 1.0},
    },
    # LETTER: collaborative and diversity regularised RQ-VAE, Sinkhorn-resolved collisions,
    # ranking-guided generation loss (temperature inside the paper's 0.7-1.2 sweep).
    Method.letter: {
        "tokenizer": {"name": "letter", "input": "text", "collisions": "sinkhorn"},
        "trainer": {"temperature": 0.8},
    },
}
