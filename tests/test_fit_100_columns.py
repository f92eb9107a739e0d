"""`segsync status` and the one-shot backfill's summary fit 100 columns (long names,
URLs and hashes shortened, a row too wide continued on an indented line), and both
have a `--json` output for scripts that shortens nothing."""

from __future__ import annotations

import io
import json
import sys

import trio

from agent.commands import cli
from agent.commands.oneshot import print_summary
from agent.commands.status_view import render_status
from agent.peers.peer_set import Peer
from agent.pull.round_stats import PairStats, RoundResult
from conftest import wait_until
from fault_helpers import REPO, refusing_peer_url
from helpers import hours_ago, make_name, write_segments
from protocol import messages as m
from protocol.names import Kind

WIDTH = 100
LONG_NAME = "archive-node-b-of-the-charity-marathon-volunteers-" + "x" * 40  # 90 characters
LONG_URL = "https://archive-node-c.volunteers-of-the-charity-marathon.example.org:8200"


def widest(text: str) -> int:
    return max(map(len, text.splitlines()))


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await trio.to_thread.run_sync(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_with_long_names_urls_and_hashes_fits():
    lost = make_name(b"rotten", hours_ago(3))
    error = (f"{LONG_URL}: cannot tell its kind: /v1: ConnectError: [Errno -2] Name or "
             "service not known; all attempts to connect failed")
    status = m.StatusReply(
        node="node-a-" + "y" * 80, url="http://127.0.0.1:8200", started_at=0, time=3600,
        segments=12, peers=[
            m.PeerStatus(url="http://127.0.0.1:8201", name=LONG_NAME, kind="segsync",
                         reachable=True, last_push=3590, last_round=3500, round_ok=True,
                         queue_depth=0, missing=3),
            m.PeerStatus(url=LONG_URL, name=None, kind="unknown", reachable=False,
                         reach_error=error, queue_depth=12345, push_dropped=7),
        ],
        scrub=m.ScrubStatus(checked=10, bytes=10, rotten=1, healed=0, lost=1,
                            lost_paths=[lost.path], pass_started=3000.0, position=lost.path),
        chat_batches=3, chat_tombstones=1, extras_files=4)
    out = render_status(status)
    assert widest(out) <= WIDTH, out
    lines = out.splitlines()
    assert lines[1] == "    3 chat batches (1 tombstoned), 4 extras files"  # kept whole
    head = next(i for i, line in enumerate(lines) if line.startswith("peer"))
    # every peer row is as tall as the heading; a continuation line is indented
    rows = lines[head:head + 3 * (len(lines[head:]) // 3)]
    height = 1 + next(i for i, line in enumerate(lines[head + 1:]) if not line.startswith(" "))
    assert all(line.startswith("    ") for line in lines[head + 1:head + height])
    first = lines[head + height:head + 2 * height]
    assert first[0].startswith(LONG_NAME[:23] + "…")  # shortened, not broken across lines
    assert "http://127.0.0.1:8201" in first[0]  # a short URL stays whole
    second = " ".join(lines[head + 2 * height:head + 3 * height])
    assert "https://archive-node-c.volunte…:8200" in second.split()  # 36 columns
    assert "12345" in second.split()
    assert rows
    # the error in full, wrapped at spaces: every word of it is there, none split
    words = " ".join(out.split())
    assert error.removeprefix(f"{LONG_URL}: ") in words
    assert "7 pushes dropped" in words
    # the lost segment's hash cut, the rest of its path kept
    assert "    " + lost.path.replace(lost.hash_text, lost.hash_text[:8] + "…") in lines


def test_backfill_summary_with_long_urls_fits():
    results = [
        RoundResult(LONG_URL, pairs={("desertbus", "source"): PairStats(
            hours_listed=336, missing=123456, downloaded=123400, failed=56, bytes=345 * 2**30)}),
        RoundResult("http://127.0.0.1:8201", ok=False,
                    error="http://127.0.0.1:8201: cannot tell its kind: /v1: ConnectError: "
                          "all attempts to connect to 127.0.0.1:8201 failed"),
    ]
    out = io.StringIO()
    assert print_summary(results, 10.0, out) == 57
    text = out.getvalue()
    assert widest(text) <= WIDTH, text
    assert "123456" in text.split() and "123400" in text.split() and "353280.0" in text.split()
    assert "FAILURES: 57" in text
    assert "all attempts to connect to 127.0.0.1:8201 failed" in " ".join(text.split())

    out = io.StringIO()
    assert print_summary(results, 10.0, out, as_json=True) == 57
    data = json.loads(out.getvalue())
    assert [p["url"] for p in data["peers"]] == [LONG_URL, "http://127.0.0.1:8201"]
    first, down = data["peers"]
    assert first["totals"]["missing"] == 123456 and first["totals"]["bytes"] == 345 * 2**30
    assert first["pairs"] == [{"channel": "desertbus", "quality": "source",
                               **{k: v for k, v in first["pairs"][0].items()
                                  if k not in ("channel", "quality")}}]
    assert first["pairs"][0]["failed"] == 56
    assert down["ok"] is False and "ConnectError" in down["error"]
    assert data["failures"] == 57 and data["segments"] == 123400


async def test_status_and_its_json_from_a_running_node(cluster_factory, capsys):
    async with cluster_factory(2, connect=False) as c:
        a, b = c.nodes
        dead = refusing_peer_url()
        await a.set_peers([Peer.from_url(b.url, LONG_NAME), Peer.from_url(dead)])

        code, out, err = await run_cli(capsys, "status", "--node", a.url)
        assert code == 0, err
        assert widest(out) <= WIDTH, out
        assert LONG_NAME not in out and LONG_NAME[:23] + "…" in out

        code, out, err = await run_cli(capsys, "status", "--node", a.url, "--json")
        assert code == 0, err
        data = json.loads(out)
        assert data["node"] == a.config.node_name and data["url"] == a.url
        peers = {p["url"]: p for p in data["peers"]}
        assert peers[b.url]["name"] == LONG_NAME and peers[b.url]["reachable"] is True
        assert peers[dead]["reachable"] is False and peers[dead]["reach_error"]


async def test_oneshot_backfill_json_from_a_running_node(cluster_factory, tmp_path):
    async with cluster_factory(1, connect=False, backfill=False) as c:
        a = c.nodes[0]
        names = write_segments(c.root(0), 4, hours_ago(2))
        await wait_until(lambda: all(a.index.has(n, Kind.SEGMENT) for n in names))
        done = await trio.run_process(
            [sys.executable, "-m", "agent.commands.cli", "backfill",
             "--root", str(tmp_path / "new"), "--from", a.url, "--recent-window", "0", "--json"],
            cwd=REPO, capture_stdout=True, capture_stderr=True, check=False)
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)  # nothing but the JSON on stdout
        assert data["segments"] == 4 and data["failures"] == 0
        (peer,) = data["peers"]
        assert peer["url"] == a.url and peer["ok"] is True
        assert peer["totals"]["downloaded"] == 4
        assert peer["totals"]["bytes"] == sum(
            (c.root(0) / n.path).stat().st_size for n in names)
