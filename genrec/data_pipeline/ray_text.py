"""Item text embeddings on a Ray Data actor pool: each actor holds the sentence-transformers
model (on a GPU of its own with `cluster.use_gpu`) and encodes the batches it is handed, so a
catalogue of 10^6 items is spread over the cluster's devices instead of one process's."""

from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from genrec.data_pipeline.text_model import encode_texts, load_text_model

BLOCKS_PER_ACTOR = 4  # enough blocks for every actor to have work to the end


class TextEncoder:
    """One pool actor: the text model, loaded once, encoding one batch of texts a call."""

    def __init__(self, model: str, device: str, batch_size: int, normalize: bool) -> None:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self.model = load_text_model(model, device)
        self.batch_size, self.normalize = batch_size, normalize

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(text) for text in batch["text"]]
        vectors = encode_texts(self.model, texts, self.batch_size, self.normalize, progress=False)
        return {"item": batch["item"], "vector": vectors}


def encode_on_ray(cfg: DictConfig, texts: list[str]) -> np.ndarray:
    """Row i is the vector of texts[i], encoded by `cluster.text_actors` actors."""
    cluster, features = cfg.cluster, cfg.features
    table = pa.table({"item": np.arange(len(texts), dtype=np.int64), "text": texts})
    blocks = min(len(texts), BLOCKS_PER_ACTOR * cluster.text_actors)
    bounds = np.linspace(0, len(texts), blocks + 1).astype(int)
    work = ray.data.from_arrow([table.slice(a, b - a) for a, b in pairwise(bounds)])
    encoded = work.map_batches(
        TextEncoder,
        fn_constructor_kwargs={
            "model": features.text_model,
            "device": "cuda" if cluster.use_gpu else features.device,
            "batch_size": features.batch_size,
            "normalize": features.normalize,
        },
        batch_size=features.batch_size,
        batch_format="numpy",
        concurrency=cluster.text_actors,
        num_cpus=cluster.threads_per_worker or 1,
        num_gpus=1 if cluster.use_gpu else 0,
    )
    vectors: Any = None
    seen = np.zeros(len(texts), dtype=bool)
    with tqdm(total=len(texts), desc="text embeddings", unit="item", leave=False) as bar:
        for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
            if vectors is None:
                vectors = np.empty((len(texts), batch["vector"].shape[1]), dtype=np.float32)
            vectors[batch["item"]] = batch["vector"]
            seen[batch["item"]] = True
            bar.update(batch["item"].size)
    if not seen.all():
        raise RuntimeError(f"the text actors returned {int(seen.sum())} of {len(texts)} items")
    return vectors
