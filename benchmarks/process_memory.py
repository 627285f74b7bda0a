"""Peak memory of the processes a benchmark starts (Ray actors), sampled from outside."""

import threading

import psutil


class PeakMemory(threading.Thread):
    """Samples the RSS of every process whose command line holds `marker` (a Ray actor's
    class name) every 0.2 s; `peak` is the largest seen, in MiB. Stop it with `stop.set()`."""

    def __init__(self, marker: str) -> None:
        super().__init__(daemon=True)
        self.marker, self.stop, self.peak = marker, threading.Event(), 0.0

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for process in psutil.process_iter(["cmdline", "memory_info"]):
                if self.marker in " ".join(process.info["cmdline"] or []):
                    self.peak = max(self.peak, process.info["memory_info"].rss / 2**20)


class TreeMemory(threading.Thread):
    """Samples the memory of this process and of every process under it (a local Ray
    instance's GCS, raylet and workers, or the `ray start` nodes this process started) every
    0.2 s.

    `peaks` maps a role (driver, gcs_server, raylet, a worker's task name) to the largest
    (RSS, private) one process of that role reached, in MiB. Private is RSS less shared pages:
    a Ray process maps the objects it reads from the node's shared object store, which its
    RSS counts although the store holds them once. `total` is the largest private sum seen."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop, self.peaks, self.total = threading.Event(), {}, 0.0
        self.me = psutil.Process()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            now = 0.0
            for process in [self.me, *self.me.children(recursive=True)]:
                try:
                    memory = process.memory_info()
                    role = "driver" if process == self.me else _role(process.cmdline())
                except psutil.Error:
                    continue
                if role:
                    rss, private = memory.rss / 2**20, (memory.rss - memory.shared) / 2**20
                    now += private
                    seen = self.peaks.get(role, (0.0, 0.0))
                    self.peaks[role] = (max(seen[0], rss), max(seen[1], private))
            self.total = max(self.total, now)


def _role(cmdline: list[str]) -> str | None:
    """A Ray process's role: its task or actor name for a worker, else its program."""
    line = " ".join(cmdline)
    if line.startswith("ray::"):
        return "worker " + cmdline[0].removeprefix("ray::")
    for program in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py"):
        if program in line:
            return program
    return None
