"""Where training runs: the Ray cluster, the worker count and shape, storage and restarts."""

from dataclasses import dataclass, field


@dataclass
class ClusterConfig:
    """`address`: null starts a local Ray instance, or joins the cluster in RAY_ADDRESS when
    set; "auto" joins the cluster this machine belongs to; "ray://host:10001" a remote one.

    `storage_path`: a folder every node reaches (a local disk on one machine; NFS, EFS, Lustre
    or a bucket mounted on a cluster) that holds checkpoints and TensorBoard logs; null means
    `run_dir/train/ray`. `name` is the Ray Train run name; null derives it from the training
    fingerprint, so re-submitting the same run resumes it from its last checkpoint.

    `resources_per_worker` defaults to Ray Train's (1 CPU, plus 1 GPU with `use_gpu`).
    `threads_per_worker`: torch's intra-op threads per worker; null shares the node's cores.
    `max_failures` restarts after worker failures (-1: without limit). `schedule_timeout_s`
    bounds the wait for resources (an autoscaler may be adding nodes) before a clear error.
    `fail_at_step` > 0 kills the last worker once at that step: a fault-tolerance drill.
    """

    address: str | None = None
    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    threads_per_worker: int | None = None
    storage_path: str | None = None
    name: str | None = None
    max_failures: int = 0
    schedule_timeout_s: float = 120.0
    fail_at_step: int = 0
