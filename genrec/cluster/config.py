"""Where training runs: the Ray cluster, the worker count and shape, storage and restarts."""

from dataclasses import dataclass

from genrec.schema import Invalid, at_least, option


@dataclass
class ClusterConfig:
    """`address`: null starts a local Ray instance, or joins the cluster in RAY_ADDRESS when
    set; "auto" joins the cluster this machine belongs to; "ray://host:10001" a remote one.

    `storage_path` must be a folder every node reaches (a local disk on one machine; NFS, EFS,
    Lustre or a bucket mounted on a cluster). A null `name` derives the run name from the
    training fingerprint, so re-submitting the same run resumes it from its last checkpoint.
    """

    address: str | None = option(None, "Ray to join: null (local, or RAY_ADDRESS), auto, ray://")
    num_workers: int = option(1, "training workers (one DeepSpeed rank each)")
    use_gpu: bool = option(False, "one GPU per worker")
    resources_per_worker: dict[str, float] = option({}, "Ray resources per worker (CPU, GPU...)")
    threads_per_worker: int | None = option(None, "torch threads per worker; null: cores shared")
    storage_path: str | None = option(None, "checkpoints and TensorBoard; null: run_dir/train/ray")
    name: str | None = option(None, "Ray Train run name; null: from the training fingerprint")
    max_failures: int = option(0, "restarts from the latest checkpoint after a worker is lost")
    schedule_timeout_s: float = option(120.0, "wait for resources before a clear error")
    fail_at_step: int = option(
        0, "drill: the last worker exits once at this step, ranking actors at this batch (0: no)"
    )
    record_rows: bool = option(False, "audit: train.json lists every row each worker received")
    retokenize_actors: int = option(2, "actors of the pool that re-tokenizes items")
    retokenize_resources: dict[str, float] = option(
        {"CPU": 1.0}, "Ray resources per re-tokenizing actor (CPU, GPU fraction...)"
    )
    retokenize_block: int = option(16384, "items an actor codes per task")
    cf_workers: int = option(
        0, "Ray Train workers that train SASRec and LightGCN, data-parallel (0: in-process)"
    )
    rank_actors: int = option(
        0, "actors of the pool that ranks users in genrec evaluate/recommend (0: in-process)"
    )
    text_actors: int = option(
        0, "actors of the pool that embeds item text in genrec features (0: in-process)"
    )
    spill_dir: str | None = option(
        None, "where a local Ray instance spills objects; null: run_dir/ray_spill"
    )

    def check(self) -> None:
        at_least(self, 1, "num_workers", "retokenize_actors", "retokenize_block")
        at_least(self, -1, "max_failures")
        at_least(self, 0, "schedule_timeout_s", "fail_at_step", "rank_actors", "cf_workers")
        at_least(self, 0, "text_actors")
        if self.threads_per_worker is not None:
            at_least(self, 1, "threads_per_worker")
        for key in ("resources_per_worker", "retokenize_resources"):
            negative = {name: value for name, value in getattr(self, key).items() if value < 0}
            if negative:
                raise Invalid(key, f"must not be negative, got {negative}")
