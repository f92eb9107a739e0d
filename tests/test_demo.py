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

from agent.commands.demo import DemoResult, Written, exit_status, percentile

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


def test_a_segment_in_flight_at_ctrl_c_of_a_kept_run_is_no_failure():
    """With --keep-running, Ctrl-C may come while the last segment written is still on
    its way to the peers (CI saw it: status 1 after a clean run). The status is the
    timed demo's, judged at its summary; without a kept run, every copy counts."""
    from helpers import hours_ago, make_name

    result = DemoResult(latencies={"b": [0.01], "c": [0.01]},
                        tombstone_reached={"a": 0.02}, segment_gone={"a": 0.03})
    result.written.append(Written(1, make_name(b"1", hours_ago(1)), 1, 0.0))
    assert exit_status(result) == 0
    result.summary_ok = result.ok
    result.written.append(Written(2, make_name(b"2", hours_ago(1)), 1, 2.0))  # in flight
    assert not result.ok and exit_status(result) == 0
    result.summary_ok = None  # no kept run: the copy that never arrived is a failure
    assert exit_status(result) == 1


DASHBOARD = re.compile(r"^  ([abc])  dashboard (http://127\.0\.0\.1:\d+/)", re.M)


def test_demo_prints_each_dashboard_and_keeps_running_until_ctrl_c():
    """`--keep-running`: after the summary the agents stay up, segments keep arriving
    and a tombstone hides one, on dashboards whose URLs were printed; Ctrl-C ends it
    cleanly (status 0: the demo itself went well)."""
    import httpx

    proc = demo_process("--seconds", "2", "--keep-running")
    killer = threading.Timer(90, proc.kill)
    killer.start()
    seen: list[str] = []

    def read_until(pattern: str) -> re.Match:
        while True:
            line = proc.stdout.readline()
            assert line, "".join(seen) + proc.stderr.read()
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    try:
        read_until(r"^  c  dashboard ")
        dashboards = dict(DASHBOARD.findall("".join(seen)))
        assert set(dashboards) == set("abc"), seen
        read_until(r"^summary after ")
        read_until(r"^the agents keep running")
        # after the summary: a new segment reaches both peers, a tombstone every node
        number = int(read_until(ARRIVAL.pattern).group(1))
        tombstoned = int(read_until(r"tombstone for #(\d+) \(.*\) created on c").group(1))
        gone = set()
        while gone != set("abc"):  # in any order
            gone.add(read_until(rf"#{tombstoned} gone from ([abc])'s /files listing")[1])
        # each dashboard answers, and shows the demo's segments (and the tombstone)
        for node, url in dashboards.items():
            page = httpx.get(url, timeout=10)
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            maps = httpx.get(f"{url}dashboard/coverage?hours=2", timeout=10).json()["maps"]
            assert [(m["channel"], m["quality"]) for m in maps] == [("demo", "source")], node
            assert "T" in "".join(maps[0]["rows"]), (node, maps)  # a tombstone's cell
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        killer.cancel()
    out = "".join(seen) + rest
    assert proc.returncode == 0, out + err
    assert number > 0 and "Traceback" not in err, err
    assert re.search(r"^stopped after [\d.]+ s: \d+ segments written, [2-9]\d* tombstones",
                     out, re.M), out
    tmp = archive_dir(out)
    assert f"removed {tmp}" in out and not tmp.exists()


def test_demo_mentions_keep_running_and_the_dashboards_by_default():
    proc = demo_process("--seconds", "1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert set(dict(DASHBOARD.findall(out))) == set("abc")
    assert "--keep-running" in out
    assert "the agents keep running" not in out
