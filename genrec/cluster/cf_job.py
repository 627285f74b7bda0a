"""SASRec and LightGCN trained by Ray Train workers (`cluster.cf_workers` > 0).

On a cluster the driver of `ray job submit` is often a CPU-only head node: here the CF models
train where the cluster's workers are (a GPU each with `cluster.use_gpu`), data-parallel over
`cf_workers` ranks that each train their part of every batch and average gradients
(genrec/cf/training.py, `Shard`). Rank 0 writes the outputs into its Ray Train checkpoint, which
the driver copies into the stage's folder: nothing is written on the workers' disks that the
driver has to reach.
"""

import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch
from omegaconf import DictConfig
from ray.train import FailureConfig, RunConfig
from ray.train.torch import TorchTrainer

from genrec.cf.training import CFJob, Runner, Shard, train_here
from genrec.cluster.runtime import ray_session, require_resources, worker_group
from genrec.cluster.train_job import training_failure
from genrec.config import config_from_dict
from genrec.provenance import to_plain


def cf_loop_per_worker(job: dict[str, Any]) -> None:
    """One rank: trains its shard; rank 0 reports the finished stage folder as a checkpoint."""
    context = ray.train.get_context()
    shard = Shard(context.get_world_rank(), context.get_world_size())
    cfg = config_from_dict(job["cfg"])
    cluster = cfg.cluster
    if cluster.threads_per_worker:
        torch.set_num_threads(cluster.threads_per_worker)
    if cluster.use_gpu:
        cfg[job["name"]].device = str(ray.train.torch.get_device())
    work = CFJob(job["name"], cfg, Path(job["data_dir"]), job["make_trainer"], job["key"])
    with tempfile.TemporaryDirectory() as folder:
        train_here(work, Path(folder), shard)
        finished = ray.train.Checkpoint.from_directory(folder) if shard.rank == 0 else None
        ray.train.report({"rank": shard.rank}, checkpoint=finished)


def train_on_ray(job: CFJob, out: Path) -> None:
    """A `Runner`: the job on `cluster.cf_workers` Ray Train workers, its outputs into `out`."""
    cluster = job.cfg.cluster
    storage = Path(cluster.storage_path or out.parent / "ray").absolute()
    name = f"genrec-{job.name}-{job.key}"
    with ray_session(cluster, extra_cpus=max(0, cluster.cf_workers - cluster.num_workers)):
        require_resources(cluster, "cf_workers")
        trainer = TorchTrainer(
            cf_loop_per_worker,
            train_loop_config={
                "name": job.name,
                "cfg": to_plain(job.cfg),
                "data_dir": str(job.data_dir),
                "make_trainer": job.make_trainer,
                "key": job.key,
            },
            **worker_group(cluster, cluster.cf_workers),
            run_config=RunConfig(
                name=name,
                storage_path=str(storage),
                failure_config=FailureConfig(max_failures=cluster.max_failures),
            ),
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as err:
            raise training_failure(err, storage / name) from err
    with result.checkpoint.as_directory() as folder:
        shutil.copytree(folder, out, dirs_exist_ok=True)
    shutil.rmtree(storage / name, ignore_errors=True)  # the checkpoint only carried the outputs
    if not cluster.storage_path and not any(storage.iterdir()):
        storage.rmdir()


def cf_runner(cfg: DictConfig) -> Runner:
    """Where the CF models train: Ray Train workers when `cluster.cf_workers` > 0."""
    return train_on_ray if cfg.cluster.cf_workers else train_here
