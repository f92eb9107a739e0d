"""Anti-entropy backfill between real agents on loopback.

Rounds are driven by hand (`round_all`) except in the tests of the periodic loop, so
nothing waits for a timer. Push is off (no push peers) wherever a test must prove that
the pull did the work.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import sys

import trio

from agent.pull.backfill import Backfiller, PeerState, utc_now
from agent.peers.client import ClientFactory
from agent.config import build_config
from agent.peers.peer_set import Peer
from agent.commands.oneshot import BarProgress, print_summary, run_oneshot
from agent.archive.store import Store
from conftest import wait_until
from fault_helpers import refusing_peer_url
from helpers import (
    hours_ago,
    make_name,
    peer_label,
    replicable_state,
    touch_tombstone,
    write_segment_file,
    write_segments,
)
from protocol.backoff import Backoff
from protocol.names import Kind

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def indexed(node, names, kind: Kind = Kind.SEGMENT) -> None:
    await wait_until(lambda: all(node.index.has(n, kind) for n in names))


def temp_files(root) -> list:
    return list(root.rglob(".segsync-*"))


def pulled(node, peer: str, outcome: str) -> float:
    return node.metrics.pulls.labels(peer_label(node, peer), "segment", outcome)._value.get()


# ---- convergence ----

async def test_restarted_node_converges_to_exactly_the_peers_state(cluster_factory):
    async with cluster_factory(3, backfill=False) as c:
        a, b, _ = c.nodes
        early = write_segments(c.root(0), 4, hours_ago(5), 1)
        await wait_until(lambda: all((c.root(i) / n.path).exists()
                                     for n in early for i in (1, 2)))
        await c.stop_node(2)
        # while C is down: new segments that started hours ago, and tombstones
        late = write_segments(c.root(0), 6, hours_ago(3), 2) + write_segments(c.root(0), 3, hours_ago(2), 3)
        touch_tombstone(c.root(0), early[0])  # C holds this one: it must become hidden
        touch_tombstone(c.root(0), late[0])   # C never saw this one: tombstone only
        expected = replicable_state(c.root(0))
        await wait_until(lambda: replicable_state(c.root(1)) == expected)  # B, by push

        cn = await c.start_node(2)
        await c.connect()
        assert replicable_state(c.root(2)) != expected
        rounds = 0
        while replicable_state(c.root(2)) != expected:
            rounds += 1
            assert rounds <= 3, "no convergence within 3 rounds"
            results = await cn.backfiller.round_all([a.url, b.url])
            assert all(r.ok for r in results), [r.error for r in results]
        assert replicable_state(c.root(2)) == expected
        # the tombstoned segment C held stays on disk, hidden; the other was never fetched
        assert (c.root(2) / early[0].path).exists()
        assert not (c.root(2) / late[0].path).exists()
        # two peers offered the same segments: each was downloaded once
        fetched = sum(pulled(cn, url, "stored") for url in (a.url, b.url))
        assert fetched == len(late) - 1
        assert cn.metrics.bytes.labels("pulled")._value.get() == sum(
            len(v) for p, v in expected.items() if v is not None and p not in
            {n.path for n in early})
        assert temp_files(c.root(2)) == []
        results = await cn.backfiller.round_all([a.url, b.url])
        assert [r.pairs for r in results] == [{}, {}]


async def test_in_sync_rounds_list_no_hour_and_read_no_directory(cluster_factory, monkeypatch):
    async with cluster_factory(2, connect=False, backfill=False) as c:
        a, b = c.nodes
        names = write_segments(c.root(0), 5, hours_ago(30), 1) + write_segments(c.root(0), 5, hours_ago(2), 2)
        touch_tombstone(c.root(0), names[3])
        await indexed(a, names)
        await indexed(a, [names[3]], Kind.TOMBSTONE)
        first = await b.backfiller.round_all([a.url])
        assert first[0].total("hours_listed") == 2 and first[0].total("downloaded") == 9
        assert replicable_state(c.root(1)) == replicable_state(c.root(0))

        def no_directory_reads(*args, **kwargs):
            raise AssertionError("an in-sync round read a directory")

        for method in ("raw_filenames", "list_hour", "scan", "hours", "pairs"):
            monkeypatch.setattr(Store, method, no_directory_reads)
        for _ in range(2):
            (result,) = await b.backfiller.round_all([a.url])
            assert result.ok, result.error
            assert result.pairs == {}
            assert result.total("hours_listed") == 0
            assert result.pairs_compared == 1


# ---- what a round skips ----

async def test_recent_window(cluster_factory):
    async with cluster_factory(2, connect=False, backfill=False, recent_window=600) as c:
        a, b = c.nodes
        now = utc_now()
        inside = write_segments(c.root(0), 1, now - dt.timedelta(seconds=60), 1)[0]
        outside = write_segments(c.root(0), 1, now - dt.timedelta(seconds=1200), 2)[0]
        await indexed(a, [inside, outside])
        (r,) = await b.backfiller.round_all([a.url])
        assert r.ok, r.error
        assert r.total("skipped_recent") == 1 and r.total("downloaded") == 1
        assert (c.root(1) / outside.path).exists()
        assert not (c.root(1) / inside.path).exists()
        # skipped this round only: once it is older than the window, it is pulled
        b.backfiller.clock = lambda: utc_now() + dt.timedelta(seconds=600)
        (r,) = await b.backfiller.round_all([a.url])
        assert r.total("skipped_recent") == 0 and r.total("downloaded") == 1
        assert replicable_state(c.root(1)) == replicable_state(c.root(0))


async def test_corrupting_peer_costs_only_itself(cluster_factory, caplog):
    """A's copy rots after it was indexed: A cuts its answer short instead of serving
    the rotten bytes (issue 14), quarantines the file, and stops listing it; C stores
    nothing of it and gets everything else. (A peer that does serve wrong bytes is
    refused by the receiver: LyingPeer in test_batch_fetch and test_faults_peers.)"""
    caplog.set_level(logging.WARNING, logger="agent.archive.scrub")
    async with cluster_factory(3, connect=False, backfill=False) as c:
        a, b, cn = c.nodes
        bad, good_a = write_segments(c.root(0), 2, hours_ago(4), 1)
        good_b = write_segments(c.root(1), 3, hours_ago(4), 2)
        await indexed(a, [bad, good_a])
        await indexed(b, good_b)
        # same size, other bytes
        original = (c.root(0) / bad.path).read_bytes()
        with open(c.root(0) / bad.path, "r+b") as f:
            f.seek(100)
            f.write(bytes([original[100] ^ 0xFF]))

        results = {r.peer: r for r in await cn.backfiller.round_all([a.url, b.url])}
        assert results[a.url].failures >= 1  # the cut-short batch
        assert not (c.root(2) / bad.path).exists()
        assert temp_files(c.root(2)) == []
        await wait_until(lambda: a.scrubber.total.lost == 1)  # no peer to heal it from
        assert (c.root(0) / ".quarantine" / bad.path).exists()
        assert not a.index.has(bad, Kind.SEGMENT)
        # the next round: A no longer lists it; nothing fails, the rest is there
        results = {r.peer: r for r in await cn.backfiller.round_all([a.url, b.url])}
        assert results[a.url].ok and results[a.url].failures == 0
        assert results[b.url].ok and results[b.url].failures == 0
        assert all((c.root(2) / n.path).exists() for n in good_b + [good_a])
        assert not (c.root(2) / bad.path).exists()
        assert pulled(cn, b.url, "stored") == 3 and pulled(cn, a.url, "stored") == 1
        # logged on A, which had no peer to heal it from
        assert any(bad.path in rec.getMessage() and "rotten" in rec.getMessage()
                   for rec in caplog.records)
        # once A's bytes are right again, the next round takes it
        (c.root(0) / bad.path).write_bytes(original)
        await indexed(a, [bad])
        (r,) = await cn.backfiller.round_all([a.url])
        assert r.total("downloaded") == 1 and r.failures == 0
        assert (c.root(2) / bad.path).read_bytes() == original


async def test_no_resurrection_and_the_peer_gets_the_tombstone(cluster_factory):
    async with cluster_factory(2, connect=False, backfill=False) as c:
        a, b = c.nodes
        names = write_segments(c.root(0), 3, hours_ago(6), 1)
        await indexed(a, names)
        (r,) = await b.backfiller.round_all([a.url])  # B holds everything
        assert r.total("downloaded") == 3
        victim = names[1]
        touch_tombstone(c.root(0), victim)
        (c.root(0) / victim.path).unlink()  # the operator also deletes the .ts on A
        await wait_until(lambda: a.index.has(victim, Kind.TOMBSTONE)
                         and not a.index.has(victim, Kind.SEGMENT))

        for _ in range(2):  # A never re-fetches it from B, which lacks the tombstone
            (r,) = await a.backfiller.round_all([b.url])
            assert r.ok, r.error
            assert r.total("skipped_tombstoned") == 1 and r.total("downloaded") == 0
            assert not (c.root(0) / victim.path).exists()
        # nor by push
        size = (c.root(1) / victim.path).stat().st_size
        client = ClientFactory().client(a.url)
        try:
            assert await client.offer(victim, size) == "tombstoned"
            status, _ = await client.upload(victim, c.root(1) / victim.path)
            assert status == "tombstoned"
        finally:
            await client.aclose()
        assert not (c.root(0) / victim.path).exists()
        # B's own round brings the tombstone, without a download
        (r,) = await b.backfiller.round_all([a.url])
        assert r.total("tombstones") == 1 and r.total("downloaded") == 0
        assert (c.root(1) / victim.tombstone_path).exists()
        assert replicable_state(c.root(1)) == replicable_state(c.root(0))
        assert victim.path not in replicable_state(c.root(1))
        for node, peer in ((a, b), (b, a)):
            (r,) = await node.backfiller.round_all([peer.url])
            assert r.pairs == {}


# ---- peers: failures, backoff, list changes ----

async def test_failing_peer_backs_off_on_its_own(cluster_factory):
    async with cluster_factory(2, connect=False, backfill=False) as c:
        a, b = c.nodes
        dead = refusing_peer_url()
        # a first wait of 1-2 s (the default is 0.5-1 s): room for a slow test machine
        b.backfiller.states[dead] = PeerState(backoff=Backoff(base=2.0, cap=8.0))
        first = write_segments(c.root(0), 2, hours_ago(3), 1)
        await indexed(a, first)
        results = {r.peer: r for r in await b.backfiller.round_all([dead, a.url])}
        assert not results[dead].ok and results[dead].error
        assert results[a.url].ok and results[a.url].total("downloaded") == 2
        state = b.backfiller.states[dead]
        assert state.backoff.failures == 1
        assert b.backfiller.states[a.url].backoff.failures == 0
        # the next round, while the dead peer's backoff runs: it is left out, A is not
        more = write_segments(c.root(0), 2, hours_ago(2), 2)
        await indexed(a, more)
        assert state.backoff.wait_time(trio.current_time()) > 0.2
        results = await b.backfiller.round_all([dead, a.url])
        assert [r.peer for r in results] == [a.url]
        assert results[0].total("downloaded") == 2
        assert state.backoff.failures == 1
        # once the wait is over it is tried again, fails again and waits longer
        await trio.sleep(state.backoff.wait_time(trio.current_time()))
        results = {r.peer: r for r in await b.backfiller.round_all([dead, a.url])}
        assert not results[dead].ok and state.backoff.failures == 2
        assert replicable_state(c.root(1)) == replicable_state(c.root(0))


async def test_peer_list_changes_take_effect_at_the_next_round(cluster_factory, tmp_path):
    peers_file = tmp_path / "peers.txt"
    peers_file.write_text("# no peers yet\n")
    async with cluster_factory(1, connect=False, backfill=False) as c:
        a = c.nodes[0]
        b = await c.start_node(peers_file=peers_file, backfill_interval=0.2)
        names = write_segments(c.root(0), 3, hours_ago(3), 1)
        await indexed(a, names)
        await trio.sleep(0.5)
        assert not (c.root(1) / names[0].path).exists()  # B has no peer
        # --peers-file: picked up without a restart
        peers_file.write_text(f"{a.url}\n")
        await wait_until(lambda: all((c.root(1) / n.path).exists() for n in names), timeout=10)
        # a broken peers file keeps the last good list
        peers_file.write_text("not a url at all\n")
        await trio.sleep(1.5)
        assert [p.url for p in b.peers] == [a.url]
        more = write_segments(c.root(0), 2, hours_ago(2), 2)
        await wait_until(lambda: all((c.root(1) / n.path).exists() for n in more), timeout=10)
        # the peer leaves the list: no more rounds with it
        peers_file.write_text("")
        await wait_until(lambda: a.url not in b.backfiller.states, timeout=10)
        late = write_segments(c.root(0), 2, hours_ago(1), 3)
        await indexed(a, late)
        await trio.sleep(1.0)
        assert not any((c.root(1) / n.path).exists() for n in late)
        # --peer (the static source) works the same way
        await b.set_peers([a.url])
        await wait_until(lambda: all((c.root(1) / n.path).exists() for n in late), timeout=10)


async def test_periodic_rounds_converge_without_help(cluster_factory):
    async with cluster_factory(3, connect=False, backfill_interval=0.2, push=False) as c:
        a, b, cn = c.nodes
        dead = refusing_peer_url()
        mine_a = write_segments(c.root(0), 4, hours_ago(3), 1)
        mine_b = write_segments(c.root(1), 3, hours_ago(7), 2)
        touch_tombstone(c.root(1), mine_a[0])  # B tombstones a segment it has never seen
        # push is off: the pull does all the work
        await a.set_peers([b.url, cn.url])
        await b.set_peers([a.url, cn.url])
        await cn.set_peers([dead, a.url, b.url])

        def converged() -> bool:
            states = [replicable_state(c.root(i)) for i in range(3)]
            return states[0] == states[1] == states[2] and len(states[0]) == 7

        await wait_until(converged, timeout=20)
        # C may hold everything (through B) before its first round with A or with the
        # dead peer has ended: wait for both results before judging them
        await wait_until(lambda: all(
            url in cn.backfiller.states and cn.backfiller.states[url].last_result is not None
            for url in (dead, a.url)), timeout=20)
        assert all(not node.pusher.pushers for node in c.nodes)  # it was all pull
        state = replicable_state(c.root(2))
        assert state[mine_a[0].tombstone_path] is None and mine_a[0].path not in state
        assert all(n.path in state for n in mine_b + mine_a[1:])
        dead_state = cn.backfiller.states[dead]
        assert dead_state.backoff.failures >= 1
        assert dead_state.last_result is not None and not dead_state.last_result.ok
        assert cn.backfiller.states[a.url].last_result.ok


# ---- index upkeep ----

async def test_watcher_overflow_rescan_indexes_and_pushes_what_was_missed(cluster_factory):
    async with cluster_factory(2, backfill=False) as c:
        a, b = c.nodes
        bridge = a.watcher.bridge
        bridge.put = lambda event: None  # every event from here on is lost
        lost = write_segments(c.root(0), 4, hours_ago(2), 1)
        touch_tombstone(c.root(0), lost[0])
        await trio.sleep(0.3)
        assert not any(a.index.has(n, Kind.SEGMENT) for n in lost)
        bridge.overflow()  # what the inotify overflow path calls
        await wait_until(lambda: all(a.index.has(n, Kind.SEGMENT) for n in lost)
                         and a.index.has(lost[0], Kind.TOMBSTONE))
        assert a.metrics.watcher_rescans.labels("inotify_overflow")._value.get() == 1
        await wait_until(lambda: replicable_state(c.root(1)) == replicable_state(c.root(0)))
        # the file is visible at the rename; the receiver counts it just after
        stored = b.metrics.received.labels("segment", "stored")
        await wait_until(lambda: stored._value.get() >= 3)
        await trio.sleep(0.2)
        assert stored._value.get() == 3


# ---- the round's log line ----

async def test_round_log_line_per_peer_and_pair(cluster_factory, caplog):
    caplog.set_level(logging.INFO, logger="agent.pull.backfill")
    async with cluster_factory(2, connect=False, backfill=False, recent_window=300) as c:
        a, b = c.nodes
        old = write_segments(c.root(0), 3, hours_ago(5), 1, size=1000)
        recent = write_segments(c.root(0), 1, utc_now() - dt.timedelta(seconds=30), 2)
        other = make_name(b"x" * 500, hours_ago(5), quality="480p")
        write_segment_file(c.root(0), other, b"x" * 500)
        touch_tombstone(c.root(1), old[0])
        await indexed(a, old + recent + [other])
        await indexed(b, [old[0]], Kind.TOMBSTONE)
        caplog.clear()
        (r,) = await b.backfiller.round_all([a.url])
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "agent.pull.backfill"]
        source = [m for m in lines if f"from {a.url} desertbus/source:" in m]
        p480 = [m for m in lines if f"from {a.url} desertbus/480p:" in m]
        assert len(source) == 1 and len(p480) == 1, lines
        line = source[0]
        stats = r.pairs[("desertbus", "source")]
        assert (stats.downloaded, stats.skipped_recent, stats.skipped_tombstoned) == (2, 1, 1)
        for field in (f"hours compared {stats.hours_compared}",
                      f"hours listed {stats.hours_listed}", "missing 2", "downloaded 2",
                      "skipped recent 1", "temp 0", "tombstoned 1", "hash-mismatch 0",
                      f"bytes {stats.bytes}", "duration "):
            assert field in line, (field, line)
        assert stats.bytes == 1001 + 1002 and stats.hours_listed == 2
        assert "downloaded 1" in p480[0] and "bytes 500" in p480[0]


# ---- one-shot mode ----

async def test_oneshot_command_bootstraps_a_new_node(cluster_factory, tmp_path):
    async with cluster_factory(2, connect=False, backfill=False) as c:
        a, b = c.nodes
        names = write_segments(c.root(0), 5, hours_ago(4), 1) + write_segments(c.root(1), 3, hours_ago(9), 2)
        touch_tombstone(c.root(0), names[1])
        await indexed(a, names[:5])
        await indexed(b, names[5:])
        await indexed(a, [names[1]], Kind.TOMBSTONE)
        new_root = tmp_path / "new"
        new_root.mkdir()
        proc = await trio.run_process(
            [sys.executable, "-m", "agent.commands.cli", "backfill", "--root", str(new_root),
             "--from", a.url, "--from", b.url, "--recent-window", "0",
             "--max-concurrency", "3", "--backfill-hours", "48"],
            cwd=REPO, capture_stdout=True, capture_stderr=True, check=False)
        out = proc.stdout.decode()
        assert proc.returncode == 0, (out, proc.stderr.decode())
        assert "no failures" in out and a.url in out and b.url in out
        assert "7 segments" in out  # 4 visible from A, 3 from B
        expected = replicable_state(c.root(0)) | replicable_state(c.root(1))
        assert replicable_state(new_root) == expected
        assert temp_files(new_root) == []


async def test_oneshot_fails_when_a_peer_is_unreachable(cluster_factory, tmp_path):
    async with cluster_factory(1, connect=False, backfill=False) as c:
        a = c.nodes[0]
        names = write_segments(c.root(0), 2, hours_ago(4), 1)
        await indexed(a, names)
        new_root = tmp_path / "new"
        new_root.mkdir()
        dead = refusing_peer_url()
        cfg = build_config(dict(root=new_root, peers=[a.url, dead], recent_window=0,
                                backfill=False))
        out, err = io.StringIO(), io.StringIO()
        assert await run_oneshot(cfg, out=out, err=err) == 1
        text = out.getvalue()
        assert "FAILED" in text and "FAILURES: 1" in text and dead in text
        assert "error:" in text
        assert err.getvalue() == ""  # no bar on a stream that is not a terminal
        # the reachable peer was still served
        assert replicable_state(new_root) == replicable_state(c.root(0))
        # and once the only peer answers, the exit status is 0
        cfg = build_config(dict(root=new_root, peers=[a.url], recent_window=0, backfill=False))
        out = io.StringIO()
        assert await run_oneshot(cfg, out=out, err=io.StringIO()) == 0
        assert "no failures" in out.getvalue()


def test_progress_bar_on_any_stream():
    for stream, enabled in ((io.StringIO(), None), (io.StringIO(), True)):
        bar = BarProgress(stream, enabled)
        bar.planned(3, None)
        bar.planned(2, None)
        for size in (2**20, 2**20, 512):
            bar.fetched(size)
        bar.close()
        assert (bar.segments_total, bar.segments_done, bar.bytes_done) == (5, 3, 2 * 2**20 + 512)
        if enabled:
            shown = stream.getvalue()
            assert "3/5" in shown and "2.0 MiB" in shown and "MiB/s" in shown
        else:
            assert stream.getvalue() == ""  # not a terminal: silent


def test_summary_counts_failures():
    from agent.pull.backfill import PairStats, RoundResult

    ok = RoundResult("http://a:1", pairs={("c", "q"): PairStats(missing=3, downloaded=3,
                                                                 bytes=3 * 2**20)})
    bad = RoundResult("http://b:1", pairs={("c", "q"): PairStats(missing=2, downloaded=1,
                                                                  hash_mismatch=1)})
    down = RoundResult("http://c:1", ok=False, error="connection refused")
    out = io.StringIO()
    assert print_summary([ok], 1.0, out) == 0
    assert "no failures" in out.getvalue() and "3.0 MiB/s" in out.getvalue()
    out = io.StringIO()
    assert print_summary([ok, bad, down], 2.0, out) == 2
    text = out.getvalue()
    assert "FAILURES: 2" in text and "connection refused" in text and "4 segments" in text


def test_building_a_node_starts_nothing(tmp_path):
    """Building a Node only wires its parts: no round, no download starts by itself."""
    from agent.node import Node

    node = Node(build_config(dict(root=tmp_path, backfill=False)))
    assert isinstance(node.backfiller, Backfiller)
    assert node.backfiller.states == {} and node.downloads.in_flight == {}


async def test_backfill_backoff_is_capped_by_the_config(cluster_factory):
    async with cluster_factory(1, backoff_cap=2.5) as c:
        peer = Peer.from_url("http://127.0.0.1:9")
        state = c.nodes[0].backfiller._state(peer)
        assert state.backoff.cap == 2.5
        delays = [state.backoff.failure(100.0) for _ in range(30)]
        assert max(delays) <= 2.5
        assert state.backoff.wait_time(100.0) <= 2.5
        assert state is c.nodes[0].backfiller._state(peer)
