"""`segsync demo` end to end: a real process, its live lines, its summary, Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.commands.demo import percentile

SEGSYNC = [sys.executable, "-m", "agent.commands.cli"]
REPO = Path(__file__).parent.parent
ARRIVAL = re.compile(r"^\s*\d+\.\d\ds\s+#(\d+)\s+([bc])\s+(\d+\.\d) ms\s+(\S+)\s+\d+ KiB$", re.M)


def demo_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(SEGSYNC + ["demo", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def archive_dir(out: str) -> Path:
    match = re.search(r"archives under (\S+)", out)
    assert match, out
    return Path(match.group(1))  # the temporary directory holding node-a, -b, -c


def test_demo_runs_and_summarises():
    proc = demo_process("--seconds", "3")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "Warning" not in err and "Traceback" not in err, err
    summary = re.search(
        r"^summary after [\d.]+ s: (\d+) segments \([\d.]+ MiB\) written on a, "
        r"(\d+)/(\d+) copies delivered by push$", out, re.M)
    assert summary, out
    written, delivered, expected = map(int, summary.groups())
    assert written >= 6  # ~4 per second for 3 s, even on a busy machine
    assert delivered == expected == 2 * written

    # one live line per segment and peer, each with its latency
    arrivals = ARRIVAL.findall(out)
    assert sorted((int(n), p) for n, p, _, _ in arrivals) == sorted(
        (n, p) for n in range(1, written + 1) for p in "bc")

    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^  (b|c|all)\s+(\d+)/(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)}
    assert set(rows) == {"b", "c", "all"}, out
    for peer in "bc":
        got, of, p50, p99, worst = rows[peer]
        assert int(got) == int(of) == written
        latencies = sorted(float(ms) for n, p, ms, _ in arrivals if p == peer)
        assert float(p50) == pytest.approx(percentile(latencies, 50), abs=0.051)
        assert float(p99) == pytest.approx(percentile(latencies, 99), abs=0.051)
        assert float(worst) == pytest.approx(latencies[-1], abs=0.051)
        assert float(p50) <= float(p99) <= float(worst)

    # the tombstone: created on c, on every node, the segment gone from every listing
    assert re.search(r"tombstone for #\d+ \(.*\) created on c", out)
    for node in "abc":
        assert re.search(rf"tombstone on {node} after [\d.]+ ms", out), out
        assert re.search(rf"#\d+ gone from {node}'s /files listing after [\d.]+ ms", out), out
    assert re.search(r"^  tombstone on every node after [\d.]+ ms \(a [\d.]+, b [\d.]+, "
                     r"c [\d.]+\)$", out, re.M), out
    assert re.search(r"^  segment gone from every listing after [\d.]+ ms", out, re.M), out

    # nothing left behind
    tmp = archive_dir(out)
    assert f"removed {tmp}" in out
    assert not tmp.exists()


def test_demo_stops_cleanly_on_ctrl_c():
    proc = demo_process("--seconds", "120")
    killer = threading.Timer(60, proc.kill)
    killer.start()
    try:
        seen = []
        while True:
            line = proc.stdout.readline()
            assert line, "".join(seen) + proc.stderr.read()
            seen.append(line)
            if ARRIVAL.match(line.rstrip("\n")):
                break
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - started
    finally:
        killer.cancel()
    out = "".join(seen) + rest
    assert proc.returncode == 130, out + err
    assert stopped_in < 20  # not the full 120 s
    assert re.search(r"^interrupted after [\d.]+ s: \d+ segments", out, re.M), out
    assert "Traceback" not in err, err
    tmp = archive_dir(out)
    assert f"removed {tmp}" in out
    assert not tmp.exists()


def test_demo_rejects_bad_arguments():
    proc = subprocess.run(SEGSYNC + ["demo", "--seconds", "0"], capture_output=True, text=True,
                          cwd=REPO, timeout=30)
    assert proc.returncode == 2 and "must be > 0" in proc.stderr


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    with pytest.raises(ValueError):
        percentile(values, 101)
