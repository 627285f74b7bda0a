"""The pipeline's stages, each returning its output folder under `run_dir` and pulling in the
stages it depends on. Every stage reuses its output when inputs and config are unchanged, so
calling a stage twice, or running `genrec run` again, redoes nothing.
"""

import json
import logging
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genrec import artifacts
from genrec.artifacts import SELECT_METRIC, stage_dir
from genrec.data_pipeline.prepare import load_manifest, prepare
from genrec.data_pipeline.text_embeddings import embed_items
from genrec.errors import ConfigError
from genrec.methods import method_spec
from genrec.provenance import atomic_file, write_json
from genrec.report import write_run_report
from genrec.tokenizers.config import TokenizerInput, TokenizerName, catalogue_codebook_size
from genrec.trainer.config import Baseline

# Below this share of items with text, a dataset's text does not tell its items apart.
MIN_TEXT_SHARE = 0.5
_announced: set[str] = set()

log = logging.getLogger(__name__)


def data(cfg: DictConfig) -> Path:
    """The prepared data; it also sizes what follows the catalogue and is left unset in `cfg`
    (`tokenizer.codebook_size`), so every later stage reads one value."""
    out = prepare(cfg, lambda: _ray_for_data(cfg))
    if cfg.tokenizer.codebook_size is None:
        items = load_manifest(out)["num_items"]
        cfg.tokenizer.codebook_size = catalogue_codebook_size(items)
        log.info(
            "tokenizer.codebook_size (unset): %d codes per level for %d items",
            cfg.tokenizer.codebook_size,
            items,
        )
    return out


def _ray_for_data(cfg: DictConfig) -> AbstractContextManager:
    """Ray for the data stages, spilling to `cluster.spill_dir` or under `run_dir`."""
    from genrec.cluster.runtime import ray_session

    spill = cfg.cluster.spill_dir or Path(cfg.run_dir) / "ray_spill"
    return ray_session(cfg.cluster, spill_dir=spill)


def text_features(cfg: DictConfig) -> Path:
    out = stage_dir(cfg.run_dir, artifacts.TEXT_FEATURES)
    return embed_items(cfg, data(cfg), out, lambda: _ray_for_data(cfg))


def sasrec(cfg: DictConfig) -> Path:
    from genrec.cf.sasrec import train_sasrec
    from genrec.cluster.cf_job import cf_runner

    out = stage_dir(cfg.run_dir, artifacts.SASREC)
    return train_sasrec(cfg, data(cfg), out, cf_runner(cfg))


def lightgcn(cfg: DictConfig) -> Path:
    from genrec.cf.lightgcn import train_lightgcn
    from genrec.cluster.cf_job import cf_runner

    out = stage_dir(cfg.run_dir, artifacts.LIGHTGCN)
    return train_lightgcn(cfg, data(cfg), out, cf_runner(cfg))


def features(cfg: DictConfig) -> dict[str, Path]:
    return {"text": text_features(cfg), "sasrec": sasrec(cfg), "lightgcn": lightgcn(cfg)}


def item_vectors(cfg: DictConfig) -> TokenizerInput:
    """What the tokenizer reads: `tokenizer.input`, where `auto` is the items' text unless
    too few items have text, then SASRec's item embeddings (said once, up front)."""
    chosen = cfg.tokenizer.input
    if chosen not in (TokenizerInput.auto, TokenizerInput.text):
        return chosen
    manifest = load_manifest(data(cfg))
    with_text, items = manifest["items_with_text"], manifest["num_items"]
    if with_text >= MIN_TEXT_SHARE * items:
        return TokenizerInput.text
    source = cfg.data.interactions or "the synthetic data"
    if chosen is TokenizerInput.text:
        raise ConfigError(
            f"config key 'tokenizer.input' is text, but {with_text} of the {items} items of "
            f"{source} have text: their IDs would mean nothing; set tokenizer.input=sasrec "
            "(or lightgcn), or give the items' text with data.items"
        )
    if manifest["fingerprint"] not in _announced:
        _announced.add(manifest["fingerprint"])
        log.warning(
            "%d of the %d items of %s have text: the tokenizer reads SASRec item embeddings "
            "instead (tokenizer.input=auto; tokenizer.input=lightgcn for LightGCN's)",
            with_text,
            items,
            source,
        )
    return TokenizerInput.sasrec


def tokenizer_inputs(cfg: DictConfig) -> dict[str, Path]:
    """The vector files the configured tokenizer reads (computing them if needed)."""
    if cfg.tokenizer.name is TokenizerName.mq:
        folder = lightgcn(cfg)
        inputs = {
            "items": folder / artifacts.ITEM_EMBEDDINGS,
            "users": folder / artifacts.USER_EMBEDDINGS,
        }
        if (folder / artifacts.HOLDOUT_USER_EMBEDDINGS).exists():
            inputs["unseen_users"] = folder / artifacts.HOLDOUT_USER_EMBEDDINGS
        return inputs
    sources = {
        TokenizerInput.text: lambda: text_features(cfg) / artifacts.EMBEDDINGS,
        TokenizerInput.sasrec: lambda: sasrec(cfg) / artifacts.ITEM_EMBEDDINGS,
        TokenizerInput.lightgcn: lambda: lightgcn(cfg) / artifacts.ITEM_EMBEDDINGS,
    }
    inputs = {"items": sources[item_vectors(cfg)]()}
    if cfg.tokenizer.name is TokenizerName.letter:
        inputs["cf"] = sasrec(cfg) / artifacts.ITEM_EMBEDDINGS
    return inputs


def tokenize(cfg: DictConfig) -> Path:
    from genrec.tokenizers.tokenize import tokenize as run_tokenizer

    inputs = tokenizer_inputs(cfg)
    fingerprint = load_manifest(data(cfg))["fingerprint"]
    return run_tokenizer(cfg, fingerprint, inputs, stage_dir(cfg.run_dir, artifacts.TOKENIZER))


def retokenize(cfg: DictConfig) -> Path:
    """The kept checkpoints' ID tables (MTGRec's tokenizers), coded by the Ray actor pool."""
    from genrec.cluster.retokenize import retokenize as run_pool

    tokenizer = tokenize(cfg)
    given = cfg.tokenizer.catalogue
    vectors = Path(given) if given else tokenizer_inputs(cfg)["items"]
    return run_pool(cfg, tokenizer, vectors, stage_dir(cfg.run_dir, artifacts.KEPT_TABLES))


def id_tables(cfg: DictConfig) -> list[Path]:
    """The semantic-ID tables the model reads, group 0 first: the final IDs, or with
    `tokenizer.tables` > 1 those of the newest kept checkpoints."""
    if cfg.tokenizer.tables == 1:
        return [artifacts.semantic_ids(tokenize(cfg))]
    folder = retokenize(cfg)
    index = json.loads((folder / artifacts.TABLES_INDEX).read_text())
    return [folder / table["path"] for table in index["tables"]]


def model_tables(cfg: DictConfig) -> list[Path]:
    """The tables the trained model reads: those it trained on, or where training changes the
    IDs (ETEGRec) the table it was selected with, written beside it."""
    if method_spec(cfg.method).learns_ids:
        return [train(cfg) / artifacts.SEMANTIC_IDS]
    return id_tables(cfg)


def train(cfg: DictConfig) -> Path:
    from genrec.cluster.train_job import train as run_training

    tables = id_tables(cfg)
    out = run_training(cfg, data(cfg), tables, stage_dir(cfg.run_dir, artifacts.TRAIN))
    write_run_report(cfg.run_dir)
    return out


def finetune(cfg: DictConfig) -> Path:
    """The pre-trained model fine-tuned on one table with fixed IDs: fine-tuned on each of
    `finetune.candidates` in turn, the one whose fine-tuned model validates best is kept (the
    paper's choice; skipped, returning the pre-training, when finetune.epochs is 0). Each
    candidate's run stays in `finetune/candidates/table-<i>/`, so a rerun reuses it."""
    from genrec.cluster.train_job import train as run_training

    pretrained = train(cfg) / artifacts.MODEL
    if not cfg.finetune.epochs:
        return pretrained.parent
    tables = model_tables(cfg)
    method = method_spec(cfg.method)
    tuning = {
        "epochs": cfg.finetune.epochs,
        "lr": cfg.finetune.lr,
        "init_from": None if cfg.finetune.from_scratch else str(pretrained.absolute()),
    }
    tuned = OmegaConf.merge(cfg, method.finetune_overrides, {"trainer": tuning})
    out = stage_dir(cfg.run_dir, artifacts.FINETUNE)
    runs = {}
    for index in cfg.finetune.candidates:
        folder = out / "candidates" / f"table-{index}"
        run_training(tuned, data(cfg), [tables[index]], folder)
        summary = json.loads((folder / artifacts.TRAIN_SUMMARY).read_text())
        runs[index] = {
            "table": str(tables[index]),
            "folder": str(folder),
            "valid": summary["valid"],
        }
    best = max(runs, key=lambda index: runs[index]["valid"][SELECT_METRIC])
    log.info(
        "fine-tuned on tables %s: table %d validates best (%s %.4f)",
        list(runs),
        best,
        SELECT_METRIC,
        runs[best]["valid"][SELECT_METRIC],
    )
    for name in (artifacts.MODEL, artifacts.TRAIN_SUMMARY):
        with atomic_file(out / name) as tmp:
            shutil.copyfile(Path(runs[best]["folder"]) / name, tmp)
    write_json(out / artifacts.TABLE_CHOICE, {"table": runs[best]["table"], "candidates": runs})
    write_run_report(cfg.run_dir)
    return out


def trained_model(cfg: DictConfig) -> tuple[Path, list[Path]]:
    """The model the method ends with and the tables it reads."""
    if "finetune" in method_spec(cfg.method).stages and cfg.finetune.epochs:
        folder = finetune(cfg)
        choice = json.loads((folder / artifacts.TABLE_CHOICE).read_text())
        return folder / artifacts.MODEL, [Path(choice["table"])]
    return train(cfg) / artifacts.MODEL, model_tables(cfg)


def sasrec_baseline(cfg: DictConfig) -> dict[str, Any]:
    metrics = json.loads((sasrec(cfg) / artifacts.CF_METRICS).read_text())
    return {"valid": metrics["valid"], "test": metrics["test"]}


def evaluate(cfg: DictConfig) -> Path:
    """`run_dir/metrics.json` for `evaluate.checkpoint`, or for the trained model by default."""
    from genrec.trainer.evaluate import evaluate_checkpoint, tables_of

    given = cfg.evaluate.checkpoint
    if given:
        checkpoint = Path(given)
        tables = tables_of(checkpoint, model_tables(cfg))
    else:
        checkpoint, tables = trained_model(cfg)
    out = Path(cfg.run_dir) / artifacts.METRICS
    wanted = cfg.evaluate.baselines
    baselines = {"sasrec": sasrec_baseline(cfg)} if Baseline.sasrec in wanted else {}
    method = method_spec(cfg.method)
    folder = data(cfg)
    pool = None
    if cfg.cluster.rank_actors:
        from genrec.cluster.rank_pool import RankPool

        pool = RankPool(cfg, checkpoint, tables, load_manifest(folder)["num_items"])
    evaluate_checkpoint(cfg, method, checkpoint, folder, tables, baselines, out, pool)
    write_run_report(cfg.run_dir)
    return out


def recommend(cfg: DictConfig) -> Path:
    """Each user's (or `recommend.users`') top `recommend.k` items after its latest
    interaction, from the run in `run_dir` as it stands (nothing is trained), as Parquet
    (`recommend.out`); ranked on the Ray actor pool where `cluster.rank_actors` > 0."""
    from genrec.recommend import load, users_to_rank, write_recommendations

    recommender = load(cfg.run_dir)
    recommender.check_k(cfg.recommend.k, "recommend.k")
    split = users_to_rank(recommender, cfg.recommend.users)
    out = Path(cfg.recommend.out or Path(cfg.run_dir) / artifacts.RECOMMENDATIONS)
    k = cfg.recommend.k
    if cfg.cluster.rank_actors:
        from genrec.cluster.rank_pool import RankPool

        serving = OmegaConf.merge(recommender.cfg, {"cluster": cfg.cluster})
        items = recommender.item_ids.size
        pool = RankPool(serving, recommender.checkpoint, recommender.tables, items)
        ranked = pool.top_k(split, k)
    else:
        ranked = recommender.top_k(split, k)
    return write_recommendations(recommender, split, *ranked, out)
