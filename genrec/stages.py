"""The pipeline's stages, each returning its output folder under `run_dir` and pulling in the
stages it depends on. Every stage reuses its output when inputs and config are unchanged, so
calling a stage twice, or running `genrec run` again, redoes nothing.
"""

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genrec.data_pipeline.prepare import load_manifest, prepare
from genrec.data_pipeline.text_embeddings import embed_items
from genrec.tokenizers.config import TokenizerInput, TokenizerName


def data(cfg: DictConfig) -> Path:
    return prepare(cfg)


def text_features(cfg: DictConfig) -> Path:
    return embed_items(cfg, data(cfg), Path(cfg.run_dir) / "features" / "text")


def sasrec(cfg: DictConfig) -> Path:
    from genrec.tokenizers.sasrec import train_sasrec

    return train_sasrec(cfg, data(cfg), Path(cfg.run_dir) / "features" / "sasrec")


def lightgcn(cfg: DictConfig) -> Path:
    from genrec.tokenizers.lightgcn import train_lightgcn

    return train_lightgcn(cfg, data(cfg), Path(cfg.run_dir) / "features" / "lightgcn")


def features(cfg: DictConfig) -> dict[str, Path]:
    return {"text": text_features(cfg), "sasrec": sasrec(cfg), "lightgcn": lightgcn(cfg)}


def tokenizer_inputs(cfg: DictConfig) -> dict[str, Path]:
    """The vector files the configured tokenizer reads (computing them if needed)."""
    tok = cfg.tokenizer
    if tok.name is TokenizerName.mq:
        folder = lightgcn(cfg)
        return {"items": folder / "item_embeddings.npy", "users": folder / "user_embeddings.npy"}
    sources = {
        TokenizerInput.text: lambda: text_features(cfg) / "embeddings.npy",
        TokenizerInput.sasrec: lambda: sasrec(cfg) / "item_embeddings.npy",
        TokenizerInput.lightgcn: lambda: lightgcn(cfg) / "item_embeddings.npy",
    }
    inputs = {"items": sources[tok.input]()}
    if tok.name is TokenizerName.letter:
        inputs["cf"] = sasrec(cfg) / "item_embeddings.npy"
    return inputs


def tokenize(cfg: DictConfig) -> Path:
    from genrec.tokenizers.tokenize import tokenize as run_tokenizer

    inputs = tokenizer_inputs(cfg)
    fingerprint = load_manifest(data(cfg))["fingerprint"]
    return run_tokenizer(cfg, fingerprint, inputs, Path(cfg.run_dir) / "tokenizer")


def train(cfg: DictConfig) -> Path:
    from genrec.cluster.train_job import train as run_training

    tokenizer = tokenize(cfg)
    return run_training(cfg, data(cfg), tokenizer, Path(cfg.run_dir) / "train")


def sasrec_baseline(cfg: DictConfig) -> dict[str, Any]:
    metrics = json.loads((sasrec(cfg) / "metrics.json").read_text())
    return {"valid": metrics["valid"], "test": metrics["test"]}


def evaluate(cfg: DictConfig) -> Path:
    """`run_dir/metrics.json` for `evaluate.checkpoint`, or for the trained model by default."""
    from genrec.trainer.evaluate import evaluate_checkpoint
    from genrec.trainer.train import MODEL_FILE

    given = cfg.evaluate.checkpoint
    checkpoint = Path(given) if given else train(cfg) / MODEL_FILE
    out = Path(cfg.run_dir) / "metrics.json"
    baselines = {"sasrec": sasrec_baseline(cfg)}
    evaluate_checkpoint(cfg, checkpoint, data(cfg), tokenize(cfg), baselines, out)
    return out
