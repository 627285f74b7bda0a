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
