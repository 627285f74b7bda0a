"""A Ray cluster of several nodes on this one machine, for the benchmarks that measure work
spread over nodes (`ray start --head`, then `ray start --address` per further node)."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from genrec.cluster.runtime import forget_head
from genrec.trainer.engine import free_port


def start_node(args: list[str], log: Path) -> subprocess.Popen:
    """`ray start --block ...`, returned once up: killing it stops this node only (never
    `ray stop`, which would stop every Ray instance on the machine)."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    ports = [f"--{name}-port={free_port()}" for name in ("metrics-export", "runtime-env-agent")]
    command = [ray_bin, "start", "--block", "--node-ip-address=127.0.0.1", *ports, *args]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    while "block forever" not in log.read_text():
        if process.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.5)
    return process


@contextmanager
def local_cluster(count: int, folder: Path, head_args: tuple[str, ...] = ()) -> Iterator[str]:
    """A head (started with `head_args`) and count - 1 more nodes on this machine, one CPU
    each, with this process connected to it; yields the head's address and stops the nodes
    after."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"]
    nodes = [start_node([*head, "--disable-usage-stats", *head_args], folder / "head.log")]
    try:
        for index in range(count - 1):
            node = [f"--address={address}", "--num-cpus=1"]
            nodes.append(start_node(node, folder / f"{index}.log"))
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(address=address)
        yield address
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            node.kill()
            node.wait(timeout=120)
        forget_head(port)
