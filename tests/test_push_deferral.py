"""Downloader-aware push with real agents and real files (issue 11).

Node 0 pushes; node 1 records the same stream with a synthetic downloader (temp file
with a UUID, then rename, behind node 0); node 2 (when there is one) only archives.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import uuid
from pathlib import Path

import httpx

from agent.peers.client import ClientFactory
from conftest import wait_until
from helpers import make_name, peer_label, push_state, write_segment_file
from protocol import messages as m
from protocol.digests import hour_digest
from protocol.recording import MIN_LATENESS_MARGIN

PAIR = ("desertbus", "source")
DEFER = dict(recent_window=120, recording_idle=10)


def temp_path(root: Path, name, temp_id: str | None = None) -> Path:
    """Where wubloader's downloader writes `name` while it downloads it."""
    temp_id = temp_id or str(uuid.uuid4())
    return (Path(root) / name.hour_path /
            f"{name.start:%M:%S.%f}-{name.duration:f}-temp-{temp_id}.ts")


def start_download(root: Path, name, data: bytes) -> Path:
    path = temp_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def finish_download(temp: Path, root: Path, name) -> None:
    os.rename(temp, Path(root) / name.path)


def downloader_writes(root: Path, name, data: bytes) -> None:
    finish_download(start_download(root, name, data), root, name)


def stream(count: int, started_ago: float = 20.0) -> list[tuple[object, bytes]]:
    """`count` 2-second segments of a live stream that started `started_ago` s ago (a
    downloader writing them now is that late: over a segment, it is behind the
    stream)."""
    base = (dt.datetime.now(dt.timezone.utc)
            - dt.timedelta(seconds=started_ago)).replace(microsecond=0)
    out = []
    for i in range(count):
        data = os.urandom(50_000 + i)
        out.append((make_name(data, base + dt.timedelta(seconds=2 * i)), data))
    return out


class HeldClocks:
    """`node`'s downloader tracker clocks (monotonic and wall), stopped: only `move`
    advances them. A segment its downloader is about to write then never becomes
    overdue by the clock (a hole, fetched) because this machine is slow, nor does the
    pair go idle."""

    def __init__(self, node, wall: dt.datetime | None = None) -> None:
        self.mono = node.downloader.clock()
        self.wall = wall or node.downloader.wall_clock()
        node.downloader.clock = lambda: self.mono
        node.downloader.wall_clock = lambda: self.wall

    def move(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += dt.timedelta(seconds=seconds)


def pushes(node, peer, outcome: str) -> float:
    """`node`'s pushes to the node `peer` with that outcome (labelled by peer name)."""
    return node.metrics.pushes.labels(peer_label(node, peer.url), "segment",
                                      outcome)._value.get()


def received_bytes(node) -> float:
    return node.metrics.bytes.labels("received")._value.get()


def frontier(node):
    pair = node.downloader.state.get(*PAIR)
    return pair.frontier if pair else None


def copies(root: Path, name) -> list[str]:
    """Every file of that start time in its hour directory (versions and temps)."""
    prefix = f"{name.start:%M:%S.%f}-"
    return sorted(p.name for p in (Path(root) / name.hour_path).iterdir()
                  if p.name.startswith(prefix))


async def test_segment_ahead_of_the_local_downloader_waits_for_it(cluster_factory):
    async with cluster_factory(3, **DEFER) as c:
        a, b, archive = c.nodes
        HeldClocks(b)
        # at the live edge: node 0's "downloader" (s1 below) is then punctual too, and
        # s0, pushed to it by node 1 before or after s1 lands, is never deferred (from
        # a downloader behind the stream a passed segment waits a second: node 1's
        # status below would count it, 1 run in 8 beside two CPU hogs)
        (s0, d0), (s1, d1) = stream(2, started_ago=2.0)
        downloader_writes(c.root(1), s0, d0)  # node 1 records this pair
        await wait_until(lambda: frontier(b) == s0.start)
        write_segment_file(c.root(0), s1, d1)  # node 0's downloader is ahead
        await wait_until(lambda: pushes(a, b, "deferred") >= 1)
        # the archive-only node got it at once, without any deferral
        await wait_until(lambda: (c.root(2) / s1.path).exists())
        await wait_until(lambda: pushes(a, archive, "stored") == 1)
        assert pushes(a, archive, "deferred") == 0
        # node 1's downloader catches up: temp file, then rename
        temp = start_download(c.root(1), s1, d1)
        await wait_until(lambda: b.downloader.state.get(*PAIR).temps)
        finish_download(temp, c.root(1), s1)
        await wait_until(lambda: pushes(a, b, "have") >= 1, timeout=15)
        assert b.downloader.deferral_saved == 1
        assert b.downloader.deferred_offers >= 1
        assert b.metrics.push_deferral_saved._value.get() == 1
        assert received_bytes(b) == 0
        assert b.metrics.received.labels("segment", "stored")._value.get() == 0
        assert copies(c.root(1), s1) == [s1.filename]
        assert (c.root(1) / s1.path).read_bytes() == d1
        assert push_state(a, b.url).deferred == 0
        async with ClientFactory().client(b.url) as client:
            status = await client.status()
        assert status.defer_push is True
        assert status.deferral_saved == 1 and status.deferred_offers >= 1
        assert {p.url: p.push_deferred for p in status.peers}[a.url] == 0


async def node1_skips_a_segment_node0_has(c, started_ago: float):
    """Node 1's downloader writes s0 and s2 of a stream that started `started_ago` s
    ago, skipping s1, which node 0 then writes (and offers). Returns (s1, its bytes)."""
    b = c.nodes[1]
    (s0, d0), (s1, d1), (s2, d2) = stream(3, started_ago)
    downloader_writes(c.root(1), s0, d0)
    # seen in order: a downloader writing in order has no reorder lag to wait out
    await wait_until(lambda: frontier(b) == s0.start)
    downloader_writes(c.root(1), s2, d2)  # skipped s1
    await wait_until(lambda: frontier(b) == s2.start)
    write_segment_file(c.root(0), s1, d1)
    return s1, d1


async def test_hole_the_downloader_passed_is_pushed_at_once(cluster_factory):
    async with cluster_factory(2, **DEFER) as c:
        a, b = c.nodes
        # a downloader at the live edge: it writes each segment as it ends
        s1, d1 = await node1_skips_a_segment_node0_has(c, started_ago=2.0)
        await wait_until(lambda: (c.root(1) / s1.path).exists())
        assert (c.root(1) / s1.path).read_bytes() == d1
        assert pushes(a, b, "deferred") == 0
        await wait_until(lambda: b.downloader.holes_filled_by_push == 1)


async def test_a_hole_of_a_downloader_behind_the_stream_waits_for_its_siblings(
        cluster_factory):
    # a downloader 18 s behind the stream starts every segment that became available
    # at once: one it passed may still get its response headers (and its temp file)
    # after a later sibling landed, so the first offer of the hole waits BURST_GRACE
    async with cluster_factory(2, **DEFER) as c:
        a, b = c.nodes
        s1, d1 = await node1_skips_a_segment_node0_has(c, started_ago=20.0)
        await wait_until(lambda: pushes(a, b, "deferred") >= 1)
        await wait_until(lambda: b.downloader.holes_filled_by_push == 1)
        assert (c.root(1) / s1.path).read_bytes() == d1
        # fetched by the repairer, or pushed by a re-offer that came due first (each
        # counts once its exchange ends, after the file appeared)
        await wait_until(lambda: b.downloader.repairer.repaired + pushes(a, b, "stored") >= 1)
        assert b.downloader.repairer.repaired + pushes(a, b, "stored") == 1


async def test_deferred_segment_the_downloader_skips_arrives_by_push(cluster_factory):
    async with cluster_factory(2, **DEFER) as c:
        a, b = c.nodes
        HeldClocks(b)
        # at the live edge (a downloader behind the stream gives a passed segment time)
        (s0, d0), (s1, d1), (s2, d2) = stream(3, started_ago=2.0)
        downloader_writes(c.root(1), s0, d0)
        await wait_until(lambda: frontier(b) == s0.start)
        write_segment_file(c.root(0), s1, d1)
        await wait_until(lambda: pushes(a, b, "deferred") >= 1)
        downloader_writes(c.root(1), s2, d2)  # goes past s1 without writing it
        await wait_until(lambda: (c.root(1) / s1.path).exists(), timeout=15)
        assert (c.root(1) / s1.path).read_bytes() == d1
        await wait_until(lambda: b.downloader.holes_filled_by_push == 1)
        assert b.downloader.deferral_saved == 0
        assert b.metrics.push_holes_filled._value.get() == 1


async def test_deferred_segment_arrives_when_the_downloader_stops(cluster_factory):
    async with cluster_factory(2, recent_window=120, recording_idle=1.5) as c:
        a, b = c.nodes
        (s0, d0), (s1, d1) = stream(2)
        downloader_writes(c.root(1), s0, d0)
        await wait_until(lambda: frontier(b) == s0.start)
        write_segment_file(c.root(0), s1, d1)
        await wait_until(lambda: pushes(a, b, "deferred") >= 1)
        # node 1's downloader writes nothing more: once idle, the pair is not waited for
        await wait_until(lambda: (c.root(1) / s1.path).exists(), timeout=15)
        assert (c.root(1) / s1.path).read_bytes() == d1
        await wait_until(lambda: pushes(a, b, "stored") == 1)


async def test_no_deferral_when_turned_off_or_for_an_older_pusher(cluster_factory):
    async with cluster_factory(1, **DEFER) as c:
        (b,) = c.nodes
        HeldClocks(b)
        (s0, d0), (s1, d1) = stream(2)
        downloader_writes(c.root(0), s0, d0)
        await wait_until(lambda: frontier(b) == s0.start)
        async with ClientFactory().client(b.url) as client:
            # an older pusher does not announce "later": it is told "want"
            assert await client.offer(s1, len(d1)) == "want"
            assert await client.offer_deferrable(s1, len(d1)) == m.OfferLater(1.0)
            b.downloader.enabled = False  # what `defer-push = false` sets
            assert await client.offer_deferrable(s1, len(d1)) == m.OfferReply("want")
        other = await c.start_node(defer_push=False, **DEFER)
        assert other.downloader.enabled is False


async def test_near_duplicate_is_not_wanted(cluster_factory):
    async with cluster_factory(1) as c:
        (b,) = c.nodes
        (s0, d0), = stream(1)
        downloader_writes(c.root(0), s0, d0)
        await wait_until(lambda: b.index.segment_count() == 1)
        shifted = make_name(d0, s0.start + dt.timedelta(microseconds=700))
        async with ClientFactory().client(b.url) as client:
            assert await client.offer_deferrable(shifted, len(d0)) == m.OfferReply("have")
            assert await client.offer(shifted, len(d0)) == "have"
            other_bytes = make_name(b"x" * 10, s0.start + dt.timedelta(microseconds=700))
            assert await client.offer(other_bytes, 10) == "want"
        assert b.metrics.push_near_duplicates._value.get() == 2


async def test_temp_names_never_listed_pushed_or_warned_about(cluster_factory, caplog):
    caplog.set_level(logging.WARNING)
    async with cluster_factory(2) as c:
        a, b = c.nodes
        (s0, d0), (s1, d1) = stream(2)
        write_segment_file(c.root(0), s0, d0)
        await wait_until(lambda: (c.root(1) / s0.path).exists())
        forms = [str(uuid.uuid4()), str(uuid.uuid4()).upper(), uuid.uuid4().hex, s1.hash_text]
        temps = [temp_path(c.root(0), s1, f) for f in forms]
        for t in temps:
            t.write_bytes(d1)
        await wait_until(lambda: a.downloader.state.get(*PAIR) is not None
                         and a.downloader.state.get(*PAIR).temps)
        await a.local_files.rescan(announce_new=True)
        hour = s0.hour
        async with ClientFactory().client(a.url) as client:
            listing = await client.listing(*PAIR, hour)
            assert listing.names == [s0.filename]
            digests = await client.hour_digests(*PAIR, hour, hour)
            assert [tuple(h) for h in digests.hours] == [(hour, hour_digest([s0.filename]))]
        async with httpx.AsyncClient(base_url=a.url) as http:
            files = (await http.get(f"/files/{PAIR[0]}/{PAIR[1]}/{hour}")).json()
            assert files == [s0.filename]
        for node in c.nodes:
            for pusher in node.pusher.pushers.values():
                assert pusher.depth() == 0
        assert copies(c.root(1), s1) == []  # not pushed
        assert not [r for r in caplog.records if "temp" in r.getMessage()]


async def test_downloader_writing_a_near_duplicate_name_saves_the_deferred_push(cluster_factory):
    async with cluster_factory(2, **DEFER) as c:
        a, b = c.nodes
        HeldClocks(b)
        (s0, d0), (s1, d1) = stream(2)
        downloader_writes(c.root(1), s0, d0)
        await wait_until(lambda: frontier(b) == s0.start)
        write_segment_file(c.root(0), s1, d1)
        await wait_until(lambda: pushes(a, b, "deferred") >= 1)
        # node 1's downloader computed the start time 300 us later: same bytes
        mine = make_name(d1, s1.start + dt.timedelta(microseconds=300))
        downloader_writes(c.root(1), mine, d1)
        await wait_until(lambda: pushes(a, b, "have") >= 1, timeout=15)
        assert b.downloader.deferral_saved == 1
        assert received_bytes(b) == 0
        assert not (c.root(1) / s1.path).exists()


def long_stream(count: int, seconds: int = 10) -> list[tuple[object, bytes]]:
    """Segments long enough that a deferred sender waits MAX_RETRY_AFTER (5 s) before
    offering again: what arrives before that came by hole repair."""
    base = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=60)).replace(microsecond=0)
    return [(make_name(data, base + dt.timedelta(seconds=seconds * i), duration=f"{seconds}.0"),
             data) for i, data in enumerate(os.urandom(40_000 + i) for i in range(count))]


def repaired(node) -> float:
    return node.metrics.push_holes_repaired._value.get()


async def test_a_deferred_segment_the_downloader_passes_is_fetched_at_once(cluster_factory):
    """Issue 25: once the downloader writes a later segment, the deferred one is a
    known hole: node 1 fetches it from node 0 at once, not at node 0's next offer."""
    async with cluster_factory(3, **DEFER) as c:
        a, b, _ = c.nodes
        (s0, d0), (s1, d1), (s2, d2) = long_stream(3)
        downloader_writes(c.root(1), s0, d0)
        await wait_until(lambda: frontier(b) == s0.start)
        write_segment_file(c.root(0), s1, d1)
        await wait_until(lambda: pushes(a, b, "deferred") >= 1)
        assert s1.path in b.downloader.watch
        downloader_writes(c.root(1), s2, d2)  # passes s1 without it: a hole
        await wait_until(lambda: repaired(b) == 1)
        assert (c.root(1) / s1.path).read_bytes() == d1
        assert pushes(a, b, "stored") == 0  # node 0 never sent it: node 1 fetched it
        # counted when node 1's own watcher reports the file, which may lag the repair
        await wait_until(lambda: b.downloader.holes_filled_by_push == 1)
        assert s1.path not in b.downloader.watch
        # node 0's re-offer, when it comes, is answered "have"
        await wait_until(lambda: pushes(a, b, "have") >= 1, timeout=20)
        assert received_bytes(b) == len(d1)


async def test_a_download_begun_late_is_waited_for_not_repaired(cluster_factory):
    """A downloader that fell behind and wrote out of order is given its lag: the
    segment it passed, whose download then begins (temp file), is not fetched."""
    async with cluster_factory(2, **DEFER) as c:
        a, b = c.nodes
        # node 1's tracker clock, moved forward by the test: the lag it learns is the
        # scenario's 3 s, not however long this machine took between two writes (a
        # few ms on an idle machine gave a grace shorter than the watcher's latency)
        shift = [0.0]
        b.downloader.clock = lambda: time.monotonic() + shift[0]
        (s0, d0), (s1, d1), (s2, d2), (s3, d3), (s4, d4) = long_stream(5)
        downloader_writes(c.root(1), s0, d0)
        downloader_writes(c.root(1), s2, d2)
        await wait_until(lambda: frontier(b) == s2.start)
        shift[0] += 3.0  # the downloader writes s1 3 s after passing it
        downloader_writes(c.root(1), s1, d1)  # late: it learns the downloader's lag
        await wait_until(lambda: b.downloader.state.get(*PAIR).reorders)
        write_segment_file(c.root(0), s3, d3)
        await wait_until(lambda: pushes(a, b, "deferred") >= 1)
        downloader_writes(c.root(1), s4, d4)  # passes s3: within its lag, not a hole yet
        await wait_until(lambda: frontier(b) == s4.start)
        temp = start_download(c.root(1), s3, d3)  # its download began after all
        await wait_until(lambda: b.downloader.state.get(*PAIR).temps)
        finish_download(temp, c.root(1), s3)
        await wait_until(lambda: pushes(a, b, "have") >= 1, timeout=20)
        assert repaired(b) == 0 and received_bytes(b) == 0
        assert b.downloader.deferral_saved >= 1


async def test_a_miss_at_the_end_of_a_stream_is_repaired_without_a_later_segment(cluster_factory):
    """Issue 25: node 1's downloader misses the last segment of a stream (or the one
    before it stalls): no later segment passes it. Once the clock is past the time
    node 1's downloader, as late as it lately was, would have written it, it is a hole
    and node 1 fetches it from node 0 (10 s segments: node 0 re-offers only 5 s after
    it was told "later"; it counts as recording them for a minute)."""
    async with cluster_factory(2, recent_window=120, recording_idle=60) as c:
        a, b = c.nodes
        (s0, d0), (s1, d1), (s2, d2) = long_stream(3)
        clocks = HeldClocks(b, wall=s0.end + dt.timedelta(seconds=0.5))
        downloader_writes(c.root(1), s0, d0)  # 0.5 s after its end
        await wait_until(lambda: frontier(b) == s0.start)
        clocks.move(10.0)
        downloader_writes(c.root(1), s1, d1)  # 0.5 s after its end: on time
        await wait_until(lambda: frontier(b) == s1.start)
        clocks.move(10.0)  # s2 has ended 0.5 s ago: due in MIN_LATENESS_MARGIN
        write_segment_file(c.root(0), s2, d2)  # the last segment: node 1 missed it
        await wait_until(lambda: pushes(a, b, "deferred") >= 1)
        assert s2.path in b.downloader.watch
        assert not (c.root(1) / s2.path).exists()  # not fetched while it may still come
        clocks.move(MIN_LATENESS_MARGIN)  # overdue: nothing of it here, no download under way
        await wait_until(lambda: repaired(b) == 1)
        assert (c.root(1) / s2.path).read_bytes() == d2
        assert pushes(a, b, "stored") == 0  # node 1 fetched it, not node 0's re-offer
        assert frontier(b) == s1.start  # no later segment of its own passed it
        await wait_until(lambda: b.downloader.holes_filled_by_push == 1)
        assert received_bytes(b) == len(d2) and b.downloader.deferral_saved == 0


async def test_a_second_event_of_a_written_segment_is_not_a_second_write(cluster_factory):
    """The watcher may report one file more than once (a synthetic "created" for a new
    hour directory, then its own events). Taken as a second write, a report that came
    after the clock moved taught a lateness as late as the move, and the end of a
    stream was then repaired only that much later (it failed
    test_a_miss_at_the_end_of_a_stream_is_repaired_without_a_later_segment 5 times
    in 12)."""
    from protocol.names import Kind
    async with cluster_factory(1, recent_window=120, recording_idle=60) as c:
        (b,) = c.nodes
        (s0, d0), = long_stream(1)
        clocks = HeldClocks(b, wall=s0.end + dt.timedelta(seconds=0.5))
        downloader_writes(c.root(0), s0, d0)
        await wait_until(lambda: frontier(b) == s0.start)
        clocks.move(10.0)
        b.downloader.file_event(s0, Kind.SEGMENT, deleted=False)  # the same file again
        pair = b.downloader.state.get(*PAIR)
        assert [late for _, late in pair.lateness] == [0.5]


async def recorded_pairs(node) -> list[tuple]:
    """The node's recorded pairs as its /v1/status reply says over HTTP."""
    async with httpx.AsyncClient(base_url=node.url) as http:
        r = await http.post("/v1/status", content=m.encode(m.StatusRequest()))
    status = m.decode(r.content, m.StatusReply, 1 << 20)
    return [(p.channel, p.quality, p.declared, p.recording, p.last_local)
            for p in status.recorded_pairs]


async def declared_cluster(c):
    """Node 0 plain; node 1 declares that its downloader records PAIR (config
    `records`), so it defers that pair's offers from its start, before any file."""
    (a,) = c.nodes
    b = await c.start_node(records=["/".join(PAIR)], recording_grace=30, **DEFER)
    await c.connect()
    return a, b


async def test_a_declared_pair_is_deferred_before_the_downloaders_first_file(cluster_factory):
    """Issue 25: a node learns that it records a pair only from its downloader's first
    file; declared, the pair's offers before that file wait for the downloader too."""
    async with cluster_factory(1, **DEFER) as c:
        a, b = await declared_cluster(c)
        HeldClocks(b)  # the grace since node 1 started never runs out
        (s0, d0), = stream(1)
        write_segment_file(c.root(0), s0, d0)  # node 0's downloader is first
        await wait_until(lambda: pushes(a, b, "deferred") >= 1)
        assert b.downloader.state.get(*PAIR) is None  # nothing of node 1's downloader yet
        temp = start_download(c.root(1), s0, d0)  # node 1's downloader's first download
        await wait_until(lambda: b.downloader.state.get(*PAIR) is not None)
        finish_download(temp, c.root(1), s0)
        await wait_until(lambda: pushes(a, b, "have") >= 1, timeout=15)
        assert b.downloader.deferral_saved == 1
        assert received_bytes(b) == 0
        assert pushes(a, b, "stored") == 0
        assert copies(c.root(1), s0) == [s0.filename]
        (pair,) = await recorded_pairs(b)
        assert pair[:4] == ("desertbus", "source", True, True)
        assert abs(pair[4] - time.time()) < 60  # when its downloader's file appeared


async def test_a_declared_pair_whose_downloader_never_writes_gets_pushes_after_the_grace(
        cluster_factory):
    """A declared pair with no file of its own for `recording-grace` seconds since the
    start counts as not recorded: a node whose downloader is down is not starved."""
    async with cluster_factory(1, **DEFER) as c:
        a, b = await declared_cluster(c)
        clocks = HeldClocks(b)
        (s0, d0), = stream(1)
        write_segment_file(c.root(0), s0, d0)
        await wait_until(lambda: pushes(a, b, "deferred") >= 1)
        assert not (c.root(1) / s0.path).exists()
        assert await recorded_pairs(b) == [("desertbus", "source", True, True, None)]
        clocks.move(30.5)  # past the grace since node 1 started, nothing of its own
        # its status says so: declared, not waited for
        assert await recorded_pairs(b) == [("desertbus", "source", True, False, None)]
        await wait_until(lambda: (c.root(1) / s0.path).exists(), timeout=15)
        assert (c.root(1) / s0.path).read_bytes() == d0
        await wait_until(lambda: pushes(a, b, "stored") == 1)
        assert b.downloader.deferral_saved == 0
        assert b.downloader.state.get(*PAIR) is None
