"""Scrub (issue 14), with real agents, real files and real HTTP on loopback: rotten
segments are found, quarantined and healed from a peer; rotten bytes never leave a
node; what no peer holds stays quarantined and is reported; tombstones are left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from agent.peers.client import ClientFactory, PeerError
from agent.peers.peer_set import Peer
from agent.archive.scrub import STATE_DIR, STATE_FILE
from agent.commands.status_view import fetch_status, render_status
from conftest import peer_of, wait_until
from fault_helpers import REPO
from helpers import hours_ago, make_name, touch_tombstone, write_segment_file, write_segments
from test_legacy_peers import legacy_node
from test_threaded_fetch import Recorder
from protocol import limits
from protocol.names import Kind
from protocol.scrub import decode_state

# scrub passes and backfill rounds are started by the test, never by a timer: a
# start-up round of a peer would otherwise meet (and report) the rot first
NO_PERIODIC = dict(scrub=False, backfill=False)


def flip_byte(path: Path) -> None:
    """A bit rots in place: same size, same inode, one byte different."""
    fd = os.open(path, os.O_RDWR)
    try:
        offset = os.fstat(fd).st_size // 2
        (byte,) = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte ^ 0x01]), offset)
    finally:
        os.close(fd)


def truncate(path: Path) -> None:
    os.truncate(path, os.path.getsize(path) // 3)


def empty(path: Path) -> None:
    os.truncate(path, 0)


ROTS = {"flipped": flip_byte, "truncated": truncate, "empty": empty}


def metric(node, name: str, **labels) -> float:
    for family in text_string_to_metric_families(node.metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def replicated(c, names, to: int) -> None:
    await wait_until(lambda: all((c.root(to) / n.path).exists() for n in names))


async def test_rotten_segments_are_quarantined_and_healed_from_a_peer(cluster_factory):
    async with cluster_factory(2, **NO_PERIODIC) as c:
        a, _ = c.nodes
        names = write_segments(c.root(0), 5, hours_ago(3), size=200_000)
        await replicated(c, names, to=1)
        good = {n.path: (c.root(0) / n.path).read_bytes() for n in names}
        rotten = dict(zip(ROTS, names[1:4]))
        for kind, name in rotten.items():
            ROTS[kind](c.root(0) / name.path)

        report = await a.scrubber.run_pass(None)

        assert (report.files, report.rotten, report.healed, report.lost) == (5, 3, 3, 0)
        for kind, name in rotten.items():
            # the good copy is back, under its name, and indexed
            assert (c.root(0) / name.path).read_bytes() == good[name.path], kind
            assert a.index.has(name, Kind.SEGMENT)
            # the rotten bytes were moved aside, never deleted
            quarantined = c.root(0) / ".quarantine" / name.path
            assert quarantined.exists(), kind
            assert quarantined.read_bytes() != good[name.path]
        assert metric(a, "segsync_scrub_rotten_total", reason="mismatch") == 2
        assert metric(a, "segsync_scrub_rotten_total", reason="empty") == 1
        assert metric(a, "segsync_scrub_healed_total") == 3
        assert metric(a, "segsync_scrub_lost_total") == 0
        assert metric(a, "segsync_scrub_files_total") == 5
        assert metric(a, "segsync_scrub_last_full_pass_timestamp_seconds") > 0
        scrub = a.status.report().scrub
        assert (scrub.rotten, scrub.healed, scrub.lost) == (3, 3, 0)
        # a second pass finds everything good
        again = await a.scrubber.run_pass(None)
        assert (again.files, again.rotten) == (5, 0)


async def test_a_segment_no_peer_holds_stays_quarantined_and_is_reported(cluster_factory,
                                                                          tmp_path):
    data = os.urandom(50_000)
    name = make_name(data, hours_ago(2))
    # there before the agent starts: indexed by its start-up scan, no watcher event
    write_segment_file(tmp_path / "node0", name, data)
    async with cluster_factory(2, **NO_PERIODIC) as c:
        a, _ = c.nodes  # b is a peer, but does not hold the segment
        flip_byte(c.root(0) / name.path)

        report = await a.scrubber.run_pass(None)

        assert (report.rotten, report.healed, report.lost) == (1, 0, 1)
        assert not (c.root(0) / name.path).exists()
        assert (c.root(0) / ".quarantine" / name.path).exists()
        assert not a.index.has(name, Kind.SEGMENT)
        async with httpx.AsyncClient(base_url=a.url) as http:
            listing = (await http.get(f"/files/{name.channel}/{name.quality}/{name.hour}")).json()
        assert name.filename not in listing
        status = await fetch_status(a.url, None)  # over /v1/status, its bounded decoder
        assert status.scrub.lost == 1 and status.scrub.lost_paths == [name.path]
        shown = render_status(status).splitlines()
        i = shown.index("  LOST (in quarantine, no peer had a good copy):")
        assert shown[i + 1] == "    " + name.path.replace(name.hash_text,
                                                          name.hash_text[:8] + "…")
        assert metric(a, "segsync_scrub_lost_total") == 1


async def test_heal_skips_a_peer_whose_copy_rotted_too(cluster_factory, tmp_path):
    """B's copy is rotten as well: B cuts its answer short (and quarantines its own),
    A stores nothing from it and takes C's good copy."""
    data = os.urandom(120_000)
    name = make_name(data, hours_ago(2))
    for i in range(3):
        write_segment_file(tmp_path / f"node{i}", name, data)
    async with cluster_factory(3, **NO_PERIODIC) as c:
        a, b, _ = c.nodes
        await a.set_peers([peer_of(b), peer_of(c.nodes[2])])  # B is asked first
        flip_byte(c.root(0) / name.path)
        truncate(c.root(1) / name.path)

        report = await a.scrubber.run_pass(None)

        assert (report.rotten, report.healed, report.lost) == (1, 1, 0)
        assert (c.root(0) / name.path).read_bytes() == data
        await wait_until(lambda: b.scrubber.total.rotten == 1)  # B found its own rot
        assert (c.root(1) / ".quarantine" / name.path).exists()


async def test_heal_from_a_wubloader_node(cluster_factory, tmp_path):
    """A wubloader node (its restreamer's read API, no /v1) holding a good copy: its
    kind is probed, the copy comes over its /segments, verified; nothing is pushed to it."""
    data = os.urandom(80_000)
    name = make_name(data, hours_ago(2))
    write_segment_file(tmp_path / "node0", name, data)
    with legacy_node(tmp_path / "wub") as wub:
        write_segment_file(wub.root, name, data)
        async with cluster_factory(1, connect=False, **NO_PERIODIC) as c:
            a = c.nodes[0]
            await a.set_peers([Peer.from_url(wub.url, "wub1")])  # kind: probed
            flip_byte(c.root(0) / name.path)

            report = await a.scrubber.run_pass(None)

            assert (report.rotten, report.healed, report.lost) == (1, 1, 0)
            assert (c.root(0) / name.path).read_bytes() == data
            assert a.index.has(name, Kind.SEGMENT)
            assert any(f"GET /segments/{name.path}" in r for r in wub.requests())
            assert wub.pushes() == []


async def test_tombstoned_segments_are_left_alone(cluster_factory):
    async with cluster_factory(1, **NO_PERIODIC) as c:
        a = c.nodes[0]
        names = write_segments(c.root(0), 2, hours_ago(2))
        touch_tombstone(c.root(0), names[0])
        await a.local_files.rescan(announce_new=False)
        flip_byte(c.root(0) / names[0].path)

        report = await a.scrubber.run_pass(None)

        assert (report.files, report.rotten) == (1, 0)
        assert (c.root(0) / names[0].path).exists()  # not moved: the operator's business
        assert not (c.root(0) / ".quarantine").exists()


async def test_rotten_bytes_never_reach_another_node(cluster_factory, tmp_path):
    """Corrupt after indexing, then try push, batch fetch, single download and the
    wubloader-compatible /segments: no path delivers the bytes, and each sends the
    file to the scrub, which quarantines it."""
    # there before the agents start: indexed by the start-up scan, and no late watcher
    # event can push one of them meanwhile
    names = write_segments(tmp_path / "node0", 4, hours_ago(3), size=300_000)
    async with cluster_factory(2, connect=False, **NO_PERIODIC) as c:
        a, b = c.nodes
        pushed, fetched, downloaded, compat = names
        flip_byte(c.root(0) / pushed.path)
        truncate(c.root(0) / fetched.path)
        flip_byte(c.root(0) / downloaded.path)
        empty(c.root(0) / compat.path)

        def quarantined(n) -> bool:
            return ((c.root(0) / ".quarantine" / n.path).exists()
                    and not (c.root(0) / n.path).exists())

        # push: a -> b
        await a.set_peers([peer_of(b)])
        a.pusher.push(pushed, Kind.SEGMENT, trio.current_time())
        await wait_until(lambda: quarantined(pushed))
        await wait_until(lambda: metric(a, "segsync_pushes_total", outcome="rotten") == 1)

        # single download and /segments, straight from a's server
        async with httpx.AsyncClient(base_url=a.url) as http:
            with pytest.raises(httpx.HTTPError):  # cut short before the last chunk
                await http.get(f"/v1/segments/{downloaded.path}")
            r = await http.get(f"/segments/{compat.path}")
            assert r.status_code == 404  # empty: refused before anything is sent
        await wait_until(lambda: quarantined(downloaded) and quarantined(compat))

        # batch fetch: b pulls what a lists (the last rotten one, still indexed)
        assert a.index.has(fetched, Kind.SEGMENT)
        result = await b.backfiller.round_with_peer(a.url)
        await wait_until(lambda: quarantined(fetched))
        assert result.total("downloaded") == 0

        for n in names:  # b holds no copy of any of them, not even a temp file
            assert not (c.root(1) / n.path).exists()
        assert not list(c.root(1).rglob(".segsync-*"))
        await wait_until(lambda: a.scrubber.total.lost == 4)
        assert a.scrubber.total.rotten == 4


async def test_a_rotten_segment_cuts_a_batch_reply_where_it_starts(cluster_factory, tmp_path):
    """One reader serves a whole batch, a chunk ahead across files: the segment
    before the rotten one arrives whole, the rotten one's last chunk is never sent
    (the reply ends there), and the one after it is not sent at all. Segments of two
    chunks each, so the reader is ahead within and across files."""
    size = 2 * 1024 * 1024 + 1000
    names = write_segments(tmp_path / "node0", 3, hours_ago(3), size=size)
    async with cluster_factory(1, connect=False, **NO_PERIODIC) as c:
        a = c.nodes[0]
        before, rotten, after = names
        good = (c.root(0) / before.path).read_bytes()
        flip_byte(c.root(0) / rotten.path)
        rec = Recorder()
        async with ClientFactory().client(a.url) as client:
            with pytest.raises(PeerError):
                await client.fetch_into(names, limits.MAX_SEGMENT_BYTES, rec.open_sink,
                                        rec.settle)
        assert rec.settled == [(before.path, ("done", good))]
        assert len(rec.sinks[rotten.path].data) < size and rec.sinks[rotten.path].failed
        assert after.path not in rec.sinks
        await wait_until(lambda: (c.root(0) / ".quarantine" / rotten.path).exists())


async def test_periodic_pass_saves_its_state(cluster_factory, tmp_path):
    write_segments(tmp_path / "node0", 3, hours_ago(2), size=100_000)  # there at start-up
    async with cluster_factory(1, connect=False, scrub_start_delay=0, scrub_rate=50.0) as c:
        a = c.nodes[0]
        await wait_until(lambda: a.scrubber.passes_done >= 1)
        state = decode_state((c.root(0) / STATE_DIR / STATE_FILE).read_bytes())
        assert state.last_full_pass is not None and not state.in_progress
        assert metric(a, "segsync_scrub_bytes_total") >= sum(
            100_000 + i for i in range(3))
        # the state directory is never a channel: not listed, not replicated
        assert STATE_DIR not in [ch for ch, _ in a.index.pairs()]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.commands.cli", "scrub", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


async def test_one_shot_scrub_heals_and_exits_by_result(cluster_factory, tmp_path):
    async with cluster_factory(1, connect=False, **NO_PERIODIC) as c:
        b = c.nodes[0]
        root = tmp_path / "oneshot"
        root.mkdir()
        start = hours_ago(4)
        names = write_segments(root, 3, start, size=20_000)
        for n in names[:2]:  # b holds good copies of two of them
            write_segment_file(c.root(0), n, (root / n.path).read_bytes())
        await b.local_files.rescan(announce_new=False)
        good = (root / names[0].path).read_bytes()
        flip_byte(root / names[0].path)

        done = await trio.to_thread.run_sync(run_cli, "--root", str(root), "--from", b.url)
        assert done.returncode == 0, done.stderr
        assert "checked 3 files" in done.stdout and "rotten 1, healed 1, lost 0" in done.stdout
        assert (root / names[0].path).read_bytes() == good

        empty(root / names[2].path)  # b never had this one
        done = await trio.to_thread.run_sync(run_cli, "--root", str(root), "--from", b.url)
        assert done.returncode == 1
        assert "rotten 1, healed 0, lost 1" in done.stdout
        assert f"LOST (no peer had a good copy): {names[2].path}" in done.stdout
        assert (root / ".quarantine" / names[2].path).exists()
        # the one-shot leaves a running agent's resume point alone
        assert not (root / STATE_DIR).exists()
