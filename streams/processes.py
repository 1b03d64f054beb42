"""Starting and stopping Touchline processes (workers, sink) as children.

Used by ``touchline run`` and by the end-to-end test fixtures. Every child
gets its own free port and a log file; stop() sends SIGTERM, waits, and
escalates to SIGKILL, so nothing is ever left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from streams.kafka.broker import free_port
from streams.settings import Settings


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None  # where it serves /metrics


@dataclass
class Supervisor:
    settings: Settings
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def _spawn(self, name: str, args: list[str], overrides: dict[str, str], port: int | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        env = {**os.environ, **self.settings.to_env(), **overrides, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log:  # the child writes to its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        child = Child(name, proc, log_path, port)
        self.children.append(child)
        return child

    def start_worker(self, worker_id: int) -> Child:
        port = free_port()
        return self._spawn(f"worker-{worker_id}", ["worker", "--id", str(worker_id)], {
            "TOUCHLINE_WORKER_ID": str(worker_id), "TOUCHLINE_WEB_PORT": str(port - worker_id),
        }, port)

    def start_sink(self) -> Child:
        port = free_port()
        return self._spawn("sink", ["sink"], {"TOUCHLINE_SINK_METRICS_PORT": str(port)}, port)

    def check_alive(self) -> list[str]:
        """Names of children that exited on their own."""
        return [c.name for c in self.children if c.proc.poll() is not None]

    def kill(self, child: Child) -> None:
        """SIGKILL one child, no goodbye (a crash), and forget it."""
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait(10)
        self.children.remove(child)

    def stop(self, child: Child | None = None, grace_s: float = 15.0) -> None:
        targets = [child] if child else list(reversed(self.children))
        for c in targets:
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in targets:
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(10)
            if c in self.children:
                self.children.remove(c)


def metrics_lines(port: int, timeout_s: float = 10.0) -> list[str]:
    """The lines of a child's /metrics page."""
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s).read().decode().splitlines()


def scrape_total(port: int, *series: str) -> float:
    """Sum, over ``series``, of every sample on a child's /metrics whose line starts with that
    series, from one fetch of /metrics."""
    lines = metrics_lines(port)
    return sum(float(line.split()[-1]) for prefix in series for line in lines if line.startswith(prefix))
