"""`genrec train` as a Ray Train job: a TorchTrainer whose workers each drive one DeepSpeed rank.

The driver checks what it can before Ray starts, lays out the data stream
(genrec/data_pipeline/ray_ingest.py), starts the run and copies the selected weights out of its
final checkpoint. Each worker builds the shared loop with the run's method, resumes from the
run's latest checkpoint if there is one, and reports a checkpoint (DeepSpeed state of every
rank and the named states: progress, best weights, data position) every
`trainer.checkpoint_every` steps, so a restarted or re-submitted run continues mid-epoch.
"""

import json
import logging
import os
import shutil
import tempfile
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import ray.exceptions
import ray.train
import torch
import torch.distributed as dist
from omegaconf import DictConfig
from ray.data import DataContext
from ray.train import CheckpointConfig, FailureConfig, RunConfig
from ray.train.torch import TorchTrainer
from torch.utils.tensorboard import SummaryWriter

from genrec.artifacts import MODEL, SELECT_METRIC, SEMANTIC_IDS, TRAIN_SUMMARY
from genrec.cluster.runtime import ray_session, require_resources, worker_group
from genrec.config import config_from_dict
from genrec.data_pipeline.prepare import load_manifest
from genrec.data_pipeline.ray_ingest import (
    DataPosition,
    EveryRowSplit,
    PositionTracker,
    start_board,
    stream_batches,
    training_stream,
    unit_sizes,
)
from genrec.errors import ConfigError, GenrecError, TrainingFailed, user_error
from genrec.methods import method_spec
from genrec.provenance import atomic_file, made_with, to_plain, write_json
from genrec.tokenizers.tokenize import id_table_bytes
from genrec.trainer.config import batch_plan, window_stride
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.train import Loop, train_fingerprint, validation_sample

log = logging.getLogger(__name__)
SEQUENCES_PER_READ = 256
# Failures a restart can heal: the worker's process, actor or node went away.
LOST = (
    ray.exceptions.ActorDiedError,
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.WorkerCrashedError,
)
LOST_BY_NAME = {"WorkerHealthCheckFailedError", "WorkerHealthCheckTimeoutError", "PreemptionError"}


class Worker:
    """One Ray Train worker: the loop plus the Ray side (data shard, checkpoints, reports)."""

    def __init__(self, job: dict[str, Any]):
        self.cfg: DictConfig = config_from_dict(job["cfg"])
        self.board, self.storage = job["board"], Path(job["storage"])
        self.data_dir = Path(job["data_dir"])
        context = ray.train.get_context()
        shared = (os.cpu_count() or 1) // context.get_local_world_size()
        torch.set_num_threads(self.cfg.cluster.threads_per_worker or max(1, shared))
        method = method_spec(self.cfg.method)
        tables = [Path(path) for path in job["tables"]]
        valid = ray.get(job["valid"]) if "valid" in job else None
        self.loop = Loop(self.cfg, self.data_dir, tables, job["key"], method, valid)
        self.sizes = unit_sizes(self.data_dir, self.cfg.trainer.epochs, self.cfg.seed)
        self.position = DataPosition()
        self.loop.states["data_position"] = self.position
        self.tracker = PositionTracker(record=self.cfg.cluster.record_rows)
        self.attempt = 0

    @property
    def rank(self) -> int:
        return self.loop.rank

    def resume(self) -> int:
        """Restores the latest checkpoint, publishes its data position; returns the attempt."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                self.loop.restore(Path(folder))
        attempt = [0]
        if self.rank == 0:
            start = self.board.start.remote(self.position.state_dict(), self.loop.progress.step)
            attempt[0] = ray.get(start)
        dist.broadcast_object_list(attempt, src=0)
        return attempt[0]

    def trained(self, batch: dict[str, Any]) -> None:
        self.tracker.trained(batch["source"])
        if self.tracker.record and self.rank == 0 and self.loop.stepped():
            self.board.reached.remote(self.attempt, self.loop.progress.step + 1)
        drill = self.cfg.cluster.fail_at_step
        last = self.loop.world_size - 1
        if drill and self.attempt == 1 and self.rank == last and self.loop.progress.step >= drill:
            log.error("fault-tolerance drill: worker %d exits at step %d", self.rank, drill)
            os._exit(1)

    def checkpoint(self, metrics: dict[str, float], final: bool = False) -> None:
        """Every rank saves its DeepSpeed state and reports it; Ray merges them into one folder.
        The run's board then learns the step and, if asked, the rows each rank received."""
        workers = [None] * self.loop.world_size
        dist.all_gather_object(workers, self.tracker.state())
        self.position.advance(workers, self.sizes)
        arrivals = self.tracker.flush()
        with tempfile.TemporaryDirectory() as folder:
            self.loop.save(Path(folder))
            if final and self.rank == 0:
                write_json(Path(folder) / TRAIN_SUMMARY, self.summary())
            report = {**metrics, "rank": self.rank, "samples": self.loop.progress.samples}
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
        if self.tracker.record:
            ray.get(self.board.received.remote(self.attempt, self.rank, arrivals))
        if self.rank == 0:
            self.board.checkpointed.remote(self.attempt, self.loop.progress.step)

    def summary(self) -> dict[str, Any]:
        p, loop = self.loop.progress, self.loop
        return {
            "best_step": p.best_step,
            "valid": p.best,
            "steps": p.step,
            "epochs": loop.epoch(),
            "samples": p.samples,
            "tokens": p.tokens,
            "flops": p.flops,
            "train_seconds": round(p.train_seconds, 1),
            "train_samples_per_s": round(p.samples / max(p.train_seconds, 1e-9), 1),
            "workers": loop.world_size,
            "zero_stage": self.cfg.trainer.zero_stage,
            "parameters": loop.model.num_parameters(),
            "model": vars(loop.model.config),
            "code_groups": loop.codes.num_groups,
            "groups_drawn": p.groups,
            **loop.summary(),
            "position": self.position.state_dict(),
            "validations": p.history,
            "train_loss": p.losses,
            "tensorboard": str(self.storage / "tensorboard"),
            **loop.provenance,
        }

    def batches(self):
        shard = ray.train.get_dataset_shard("train")
        sequences = shard.iter_batches(batch_size=SEQUENCES_PER_READ, batch_format="pyarrow")
        rng = np.random.default_rng([self.cfg.seed, self.attempt, self.rank])
        trainer = self.cfg.trainer
        return stream_batches(
            sequences,
            self.tracker,
            self.cfg.data.max_history,
            batch_plan(trainer, self.loop.world_size)[0],
            trainer.shuffle_buffer,
            rng,
            self.loop.group_weights,
            self.cfg.seed,
            stride=window_stride(self.cfg),
            data_fraction=trainer.data_fraction,
        )

    def run(self) -> None:
        self.attempt = self.resume()
        writer = SummaryWriter(str(self.storage / "tensorboard")) if self.rank == 0 else None
        with closing(writer) if writer else nullcontext():
            progress = self.loop.run(self.batches(), self.trained, self.checkpoint, writer)
        self.checkpoint({"step": progress.step, **progress.best}, final=True)


def train_loop_per_worker(job: dict[str, Any]) -> None:
    Worker(job).run()


def run_name(cfg: DictConfig, key: str) -> str:
    return cfg.cluster.name or f"genrec-train-{key}"


def check_data(cfg: DictConfig, data_dir: Path, tables: list[Path]) -> None:
    """What the config can only be checked against once the data exists, before Ray starts:
    the semantic-ID tables cover the dataset's items, the method's loss and ranker build from
    them (TokenRec's user tokens and item vectors), the method's plugins build (ETEGRec's
    tokenizer loads with its item vectors), and the workers' validation share."""
    manifest = load_manifest(data_dir)
    codes = ItemCodes.load(tables, manifest["num_items"], cfg.tokenizer.codebook_size)
    method = method_spec(cfg.method)
    method.objective(cfg, codes, tables)
    method.ranker(cfg, codes, tables)
    method.plugins(cfg, tables, manifest["num_items"], torch.device("cpu"))
    users = manifest["num_valid_examples"]
    if cfg.evaluate.valid_users:
        users = min(users, cfg.evaluate.valid_users)
    if users < cfg.cluster.num_workers:
        raise ConfigError(
            f"config key 'cluster.num_workers' ({cfg.cluster.num_workers}) exceeds the "
            f"{users} validation users the workers share (evaluate.valid_users)"
        )


def _lost_worker(err: BaseException) -> str | None:
    """Which worker was lost and how, where that is why the run failed."""
    for rank, failure in sorted(getattr(err, "worker_failures", {}).items()):
        if isinstance(failure, LOST) or type(failure).__name__ in LOST_BY_NAME:
            return f"worker {rank} was lost ({type(failure).__name__})"
    return None


def training_failure(err: ray.train.TrainingFailedError, checkpoints: Path) -> GenrecError:
    """The one line a failed run ends with: the genrec error that caused it (a damaged shard,
    a bad key), a resume hint where resuming helps (a lost worker), else the first failure."""
    cause = user_error(err)
    if cause is not None:
        return cause
    lost = _lost_worker(err)
    if lost is not None:
        return TrainingFailed(
            f"training stopped: {lost}; its checkpoints are in {checkpoints}: run the same "
            "command again to resume from the latest"
        )
    failures = getattr(err, "worker_failures", {})
    first = next(iter(failures.values()), err)
    reason = str(first).strip().splitlines()[-1] if str(first).strip() else ""
    return TrainingFailed(
        f"training failed: {type(first).__name__}: {reason} (the worker log above has the "
        "traceback)"
    )


def write_learned_ids(model: Path, out: Path) -> None:
    """The IDs a model that learned them (ETEGRec) was selected with, as the table file whose
    digest the model records: `genrec evaluate` reads the model with these IDs only."""
    payload = torch.load(model, map_location="cpu", weights_only=True)
    if "item_ids" in payload:
        with atomic_file(out) as tmp:
            tmp.write_bytes(id_table_bytes(payload["item_ids"].numpy(), "item"))


def train(cfg: DictConfig, data_dir: Path, tables: list[Path], out_dir: Path) -> Path:
    """Trains on Ray (or reuses out_dir when data, IDs and config are unchanged); writes
    `model.pt` (the best-validation weights, consolidated whatever the ZeRO stage) and
    `train.json` (validation history, throughput, what each attempt read, provenance).
    `tables` are the semantic-ID tables, one per code group, group 0 the one validation reads."""
    key = train_fingerprint(cfg, data_dir, tables)
    if made_with(out_dir / TRAIN_SUMMARY, key):
        log.info("train: reusing %s (fingerprint %s)", out_dir, key)
        return out_dir
    check_data(cfg, data_dir, tables)
    cluster = cfg.cluster
    storage = Path(cluster.storage_path or out_dir / "ray").absolute()
    name = run_name(cfg, key)
    with ray_session(cluster):
        require_resources(cluster)
        context = DataContext.get_current()
        context.enable_progress_bars = False  # the training bar says enough
        context.execution_options.preserve_order = True  # the same seed, the same run
        board = start_board()
        # Paths handed to Ray are absolute: its workers run in folders of their own.
        job = {
            "cfg": to_plain(cfg),
            "data_dir": str(Path(data_dir).absolute()),
            "tables": [str(Path(path).absolute()) for path in tables],
            "key": key,
            "board": board,
            "storage": str(storage / name),
            # Read once here and shared: not every rank reading the whole split for a sample.
            "valid": ray.put(validation_sample(cfg, data_dir)),
        }
        stream = training_stream(job["data_dir"], cfg.trainer.epochs, cfg.seed, board)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=job,
            **worker_group(cluster, cluster.num_workers),
            run_config=RunConfig(
                name=name,
                storage_path=str(storage),
                failure_config=FailureConfig(max_failures=cluster.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.trainer.keep_checkpoints),
            ),
            datasets={"train": stream},
            dataset_config=EveryRowSplit(),
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as err:
            raise training_failure(err, storage / name) from err
        attempts = ray.get(board.history.remote())
    with result.checkpoint.as_directory() as folder, atomic_file(out_dir / MODEL) as tmp:
        summary = json.loads((Path(folder) / TRAIN_SUMMARY).read_text())
        shutil.copyfile(Path(folder) / MODEL, tmp)
    write_learned_ids(out_dir / MODEL, out_dir / SEMANTIC_IDS)
    summary |= {"ray_run": str(storage / name), "attempts": attempts}
    write_json(out_dir / TRAIN_SUMMARY, summary)
    log.info(
        "train: best valid ndcg@10 %.4f at step %d -> %s",
        summary["valid"][SELECT_METRIC],
        summary["best_step"],
        out_dir,
    )
    return out_dir
