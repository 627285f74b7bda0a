"""Connecting to Ray and making sure the requested workers can be scheduled at all."""

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from omegaconf import DictConfig
from ray.train import ScalingConfig
from ray.train.torch import TorchConfig

from genrec.errors import ConfigError
from genrec.trainer.engine import free_port

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0
API_SERVER = "RAY_API_SERVER_ADDRESS"  # where Ray's state API calls go, inherited by workers


def worker_bundle(cluster: DictConfig) -> dict[str, float]:
    """One worker's resources, as Ray Train will request them."""
    bundle = {"CPU": 1.0, **({"GPU": 1.0} if cluster.use_gpu else {})}
    return {**bundle, **cluster.resources_per_worker}


@contextmanager
def ray_session(
    cluster: DictConfig, extra_cpus: float = 0.0, spill_dir: str | Path | None = None
) -> Iterator[None]:
    """Joins `cluster.address` (or RAY_ADDRESS), else starts a local instance for the run.

    The local instance gets a CPU more than the workers (and `extra_cpus`: a sweep's trial
    process) need, or what the re-tokenizing pool needs if more, so Ray Data's read tasks are
    never starved by the training workers, and a dashboard, which serves Ray's state API. It
    is always a new one (`address="local"`): a bare `ray.init()` would join whatever instance
    /tmp/ray/ray_current_cluster names, even a dead one, while the user asked for none. Its
    processes get its dashboard as RAY_API_SERVER_ADDRESS, or Ray Train's placement-group
    cleaner would ask the instance that record names (a `ray start` head on the same machine)
    whether this run's controller lives, hear no, and take the workers away. It spills objects
    to `spill_dir` when given (a run's data can outgrow a small system temporary folder); a
    cluster spills where its nodes were started to.
    """
    if ray.is_initialized():
        yield
        return
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        # A cluster's runs show on its dashboard's Train page (off by default in Ray; on a
        # local instance its state actor cannot reach the GCS and only prints tracebacks).
        os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
        ray.init(address=address, log_to_driver=True)
    else:
        pool = cluster.retokenize_resources.get("CPU", 1.0) * cluster.retokenize_actors
        need = max(worker_bundle(cluster)["CPU"] * cluster.num_workers + 1 + extra_cpus, pool)
        cpus = max(os.cpu_count() or 1, math.ceil(need))
        port, before = free_port(), os.environ.get(API_SERVER)
        os.environ[API_SERVER] = f"http://127.0.0.1:{port}"
        spilling = {"type": "filesystem", "params": {"directory_path": str(spill_dir)}}
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=True,
            dashboard_port=port,
            _system_config={"object_spilling_config": json.dumps(spilling)} if spill_dir else None,
        )
    try:
        yield
    finally:
        ray.shutdown()
        if not address:
            _restore(API_SERVER, before)


def _restore(name: str, value: str | None) -> None:
    """Puts an environment variable back as it was (unset if it was)."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def worker_group(cluster: DictConfig, workers: int) -> dict[str, Any]:
    """A TorchTrainer's group of `workers` workers shaped by `cluster`: their resources (a GPU
    each with `use_gpu`) and their process group's backend (NCCL on GPUs, gloo on CPUs)."""
    return {
        "torch_config": TorchConfig(backend="nccl" if cluster.use_gpu else "gloo"),
        "scaling_config": ScalingConfig(
            num_workers=workers,
            use_gpu=cluster.use_gpu,
            resources_per_worker=dict(cluster.resources_per_worker) or None,
        ),
    }


def workers_that_fit(bundle: dict[str, float]) -> int:
    """How many worker bundles the alive nodes can hold (a bundle never spans nodes)."""
    total = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        total += min(int(have.get(key, 0.0) // need) for key, need in bundle.items() if need > 0)
    return total


def require_resources(cluster: DictConfig, key: str = "num_workers") -> None:
    """Waits up to `schedule_timeout_s` for room for every worker (`cluster[key]` of them),
    then fails with a message naming what is missing, instead of waiting forever."""
    bundle, workers = worker_bundle(cluster), cluster[key]
    deadline = time.monotonic() + cluster.schedule_timeout_s
    while (fit := workers_that_fit(bundle)) < workers:
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"cannot schedule cluster.{key}={workers} workers of {bundle}: the cluster's "
                f"nodes hold {fit} (resources: {ray.cluster_resources()}); lower "
                f"cluster.{key} or cluster.resources_per_worker, or add nodes"
            )
        log.info("waiting for resources: %d of %d workers fit", fit, workers)
        time.sleep(POLL_SECONDS)


def forget_head(port: int) -> None:
    """Removes `ray start`'s record of a head on `port` (/tmp/ray/ray_current_cluster), as
    `ray stop` would (but that stops every instance on the machine): once the head is gone, a
    stale record sends a later local run's Ray state API to a dead address."""
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    record = Path(base) / "ray" / "ray_current_cluster"
    if record.exists() and record.read_text().strip().endswith(f":{port}"):
        record.unlink()
