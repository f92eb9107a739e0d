"""Shared plumbing of the benchmark scripts: real agent processes, timing, reports.

Agents run as separate `segsync run` processes (what an operator deploys), so a
benchmark measures real sockets, real files and real inotify, and the bench's own
work never shares an interpreter (or a GIL) with an agent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import httpx

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SEGSYNC = Path(sys.executable).with_name("segsync")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ---- ports and processes ----

def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (bound to port 0 together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def segsync_command(*args: str) -> list[str]:
    """`segsync ARGS`, behind SEGSYNC_BENCH_WRAP if set: a command prefix (a tracer, or
    `env PYTHONPATH=OTHER_CHECKOUT python` to measure another version of the code)."""
    wrap = os.environ.get("SEGSYNC_BENCH_WRAP", "").split()
    return wrap + [str(SEGSYNC), *args]


class Agent:
    """One `segsync run` process with its root, URL and log file."""

    def __init__(self, name: str, root: Path, port: int, peers: Sequence[str],
                 log_dir: Path, extra: Sequence[str] = (), scheme: str = "http",
                 verify=True) -> None:
        """`scheme` https: the agent serves TLS (its flags in `extra`); `verify` is
        httpx's for the readiness probe."""
        self.name = name
        self.root = root
        self.port = port
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.verify = verify
        self.log_path = log_dir / f"{name}.log"
        self.args = segsync_command("run", "--root", str(root),
                                    "--listen", f"127.0.0.1:{port}", "--node-name", name)
        for peer in peers:
            self.args += ["--peer", peer]
        self.args += list(extra)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=REPO)
        finally:
            log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Poll /healthz until it answers 200; returns the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; "
                                   f"see {self.log_path}:\n{tail(self.log_path)}")
            try:
                r = httpx.get(f"{self.url}/healthz", timeout=1.0, verify=self.verify)
                if r.status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout}s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean stop), then SIGKILL of this one process if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # -- resource figures from /proc --
    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return process_rss_bytes(self.pid)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def running(agents: Iterable[Agent], ready_timeout: float = 600.0) -> Iterator[list[Agent]]:
    """Start the agents, wait until each serves, stop them all on the way out."""
    agents = list(agents)
    try:
        for a in agents:
            a.start()
        for a in agents:
            a.wait_ready(ready_timeout)
        yield agents
    finally:
        for a in agents:
            a.stop()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def process_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


# ---- working directories ----

def add_common_arguments(p: argparse.ArgumentParser, output: str, quick: str) -> None:
    """The options every benchmark takes: agents' log level, where to work, whether to
    keep it, a smoke run (`quick` says what it does), and the result file stem."""
    p.add_argument("--log-level", default="WARNING", help="agents' log level")
    p.add_argument("--workdir", help="directory for the archives (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--quick", action="store_true", help=f"short smoke run ({quick})")
    p.add_argument("--output", default=output, help="result file stem")


@contextmanager
def workdir(path: str | None, keep: bool) -> Iterator[Path]:
    if path:
        base = Path(path)
        base.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(tempfile.mkdtemp(prefix="segsync-bench-"))
    try:
        yield base
    finally:
        if not keep and not path:
            shutil.rmtree(base, ignore_errors=True)


# ---- statistics and reports ----

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n*q/100), at least 1
    return ordered[min(len(ordered), int(rank)) - 1]


def summary_ms(values_s: Sequence[float]) -> dict:
    """p50/p95/p99/max (milliseconds) of a list of durations in seconds."""
    ms = [v * 1000 for v in values_s]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
    }


def print_table(headers: Sequence[str], rows: Iterable[Sequence], title: str | None = None) -> None:
    rows = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def fmt(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def environment() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": load,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return path


def pyplot():
    """matplotlib with a file-only backend (no display on a server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
