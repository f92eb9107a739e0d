"""The threaded batch fetch (agent.peers.threaded_fetch): a real agent, and hand-made
peers for what a real one never does, over loopback HTTP."""

from __future__ import annotations

import datetime as dt
import os
import ssl

import h11
import pytest
import trio

from agent.peers.bandwidth import Bandwidth
from agent.peers.client import ClientFactory, PeerError
from agent.peers.threaded_exchange import READ_BYTES, connects_directly
from agent.peers.tls import ClientTls
from conftest import wait_until
from fault_helpers import FETCH_STREAM, _read_request, _serve
from helpers import hours_ago, make_name, write_segment_file, write_segments
from protocol import limits
from protocol import messages as m
from protocol.bandwidth import TransferClass
from protocol.fetchstream import frame_header
from tls_helpers import loopback_tls


class Sink:
    """Keeps what it is given; `refuse_at` / `enough_at`: bytes after which `write`
    raises, or answers that the rest is not needed."""

    def __init__(self, name, size, refuse_at=None, enough_at=None) -> None:
        self.name, self.size = name, size
        self.data = bytearray()
        self.refuse_at, self.enough_at = refuse_at, enough_at
        self.failed: BaseException | None = None

    def write(self, data):
        self.data += data
        if self.refuse_at is not None and len(self.data) >= self.refuse_at:
            raise ValueError("refused")
        if self.enough_at is not None and len(self.data) >= self.enough_at:
            return "have"
        return None

    def end(self):
        return ("done", bytes(self.data))

    def fail(self, e) -> None:
        self.failed = e


class Recorder:
    """The fetch's two callbacks: sinks made (in order), outcomes settled (as tasks of
    their own, in no set order)."""

    def __init__(self, **sink_options) -> None:
        self.sinks: dict = {}
        self.settled: list = []
        self.unpaced = 0
        self.options = sink_options

    def open_sink(self, name, size):
        options = self.options.get(name.path, {})
        self.sinks[name.path] = sink = Sink(name, size, **options)
        return sink

    async def settle(self, name, outcome, unpaced):
        self.unpaced += unpaced
        self.settled.append((name.path, outcome))


async def test_segments_stream_into_their_sinks_in_order(cluster_factory):
    async with cluster_factory(1) as c:
        node = c.nodes[0]
        # one larger than the read buffer: it spans several reads
        big = write_segments(c.root(0), 1, hours_ago(2), size=READ_BYTES + 300_000)
        names = big + write_segments(c.root(0), 3, hours_ago(2), tag=1, size=200_000)
        empty = make_name(b"", hours_ago(2) + dt.timedelta(seconds=30))
        write_segment_file(c.root(0), empty, b"")
        absent = make_name(b"absent", hours_ago(2) + dt.timedelta(seconds=50))
        await node.local_files.rescan(announce_new=False)
        asked = [names[1], absent, names[0], empty, names[2], names[3]]
        rec = Recorder()
        async with ClientFactory().client(node.url) as client:
            assert client.fetch_target is not None
            await client.fetch_into(asked, limits.MAX_SEGMENT_BYTES, rec.open_sink,
                                    rec.settle)
        assert list(rec.sinks) == [n.path for n in asked if n != absent]
        assert dict(rec.settled) == {
            n.path: None if n == absent else ("done", (c.root(0) / n.path).read_bytes())
            for n in asked}
        assert len(rec.settled) == len(asked)
        assert all(sink.failed is None for sink in rec.sinks.values())
        assert rec.unpaced == sum((c.root(0) / n.path).stat().st_size for n in names)


async def test_a_sink_that_refuses_or_needs_no_more_costs_only_its_segment(cluster_factory):
    async with cluster_factory(1) as c:
        node = c.nodes[0]
        names = write_segments(c.root(0), 3, hours_ago(2), size=300_000)
        await node.local_files.rescan(announce_new=False)
        rec = Recorder(**{names[0].path: {"refuse_at": 1}, names[1].path: {"enough_at": 1}})
        async with ClientFactory().client(node.url) as client:
            await client.fetch_into(names, limits.MAX_SEGMENT_BYTES, rec.open_sink,
                                    rec.settle)
        p0, p1, p2 = (n.path for n in names)
        settled = dict(rec.settled)
        assert isinstance(settled[p0], ValueError) and rec.sinks[p0].failed is settled[p0]
        assert settled[p1] == "have" and rec.sinks[p1].failed is None
        assert settled[p2] == ("done", (c.root(0) / p2).read_bytes())


async def test_an_error_reply_is_a_peer_error_with_its_status(cluster_factory):
    async with cluster_factory(1, token="s3cret") as c:  # noqa: S106 - a test secret
        node = c.nodes[0]
        names = write_segments(c.root(0), 1, hours_ago(2))
        await node.local_files.rescan(announce_new=False)
        rec = Recorder()
        async with ClientFactory(token="wrong").client(node.url) as client:  # noqa: S106
            with pytest.raises(PeerError) as e:
                await client.fetch_into(names, limits.MAX_SEGMENT_BYTES, rec.open_sink,
                                        rec.settle)
        assert e.value.status == 401 and "HTTP 401" in str(e.value)
        assert rec.settled == [] and rec.sinks == {}
        # the right token: the same fetch works
        async with ClientFactory(token="s3cret").client(node.url) as client:  # noqa: S106
            await client.fetch_into(names, limits.MAX_SEGMENT_BYTES, rec.open_sink,
                                    rec.settle)
        assert [p for p, _ in rec.settled] == [names[0].path]


@pytest.mark.parametrize("limit", [None, 50e6])
async def test_every_byte_is_counted_once_with_or_without_a_limit(cluster_factory, limit):
    """Without a limit a segment's bytes are counted when it is settled; with one, each
    read waits for the limit in trio as it comes."""
    async with cluster_factory(1) as c:
        node = c.nodes[0]
        names = write_segments(c.root(0), 4, hours_ago(2), size=400_000)
        await node.local_files.rescan(announce_new=False)
        bandwidth = Bandwidth(download=limit)
        rec = Recorder()
        async with ClientFactory(bandwidth=bandwidth).client(node.url) as client:
            async def settle(name, outcome, unpaced):
                await rec.settle(name, outcome, unpaced)
                await client.pacing.receive(unpaced, name)  # as the puller does

            await client.fetch_into(names, limits.MAX_SEGMENT_BYTES, rec.open_sink, settle)
        total = sum((c.root(0) / n.path).stat().st_size for n in names)
        counted = bandwidth.download.scheduler.counters[TransferClass.CATCHUP].bytes
        assert counted == total
        assert rec.unpaced == (total if limit is None else 0)


@pytest.mark.parametrize("limit", [None, 50e6])
async def test_the_bytes_of_a_segment_cut_short_are_counted_too(limit):
    """A reply that ends in the middle of a segment: the exchange fails, and the
    bytes that did arrive are taken from the node's limits all the same (without a
    limit they wait to be counted with their segment, which never ends)."""
    data = os.urandom(3 * READ_BYTES)
    name = make_name(data, hours_ago(2))
    body = frame_header(m.FetchItem(name.path, len(data))) + data
    cut = len(body) // 2

    async def handler(stream):
        conn = await _answer_head(stream, body)
        await stream.send_all(conn.send(h11.Data(data=body[:cut])))
        await stream.aclose()

    bandwidth = Bandwidth(download=limit)
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(_serve, handler)
        async with ClientFactory(bandwidth=bandwidth).client(url) as client:
            with pytest.raises(PeerError):
                await client.fetch_into([name], limits.MAX_SEGMENT_BYTES, rec.open_sink,
                                        rec.settle)
        nursery.cancel_scope.cancel()
    assert rec.settled == []
    received = len(rec.sinks[name.path].data)
    assert 0 < received < len(data)
    assert bandwidth.download.scheduler.counters[TransferClass.CATCHUP].bytes == received


async def _answer_head(stream, body: bytes) -> h11.Connection:
    """Read a batch fetch request and send the head of a 200 reply of `body`."""
    conn = h11.Connection(h11.SERVER)
    await _read_request(stream, conn)
    headers = [("content-type", FETCH_STREAM), ("content-length", str(len(body)))]
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
    return conn


async def _stalling_peer(data: bytes, name, sent: trio.Event, tls: ssl.SSLContext | None,
                         task_status) -> None:
    """Answers a batch fetch with the head and the first half of `name`'s bytes, then
    sends nothing more (the connection stays open); over TLS when `tls` is given."""
    body = frame_header(m.FetchItem(name.path, len(data))) + data

    async def handler(stream):
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_side=True)
        conn = await _answer_head(stream, body)
        await stream.send_all(conn.send(h11.Data(data=body[:len(body) // 2])))
        sent.set()
        await trio.sleep_forever()

    await _serve(handler, task_status)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_cancelling_a_fetch_stops_its_thread_at_once(tmp_path, tls):
    """A peer that stops sending mid-segment (after more than one read buffer), and a
    read timeout of a minute: the cancelled fetch returns as soon as its socket is
    shut down (under TLS too: the plain socket's shutdown, not the TLS layer's), and
    the segment's sink is failed (its temp file would go)."""
    data = os.urandom(3 * READ_BYTES)
    name = make_name(data, hours_ago(2))
    sent = trio.Event()
    rec = Recorder()
    server_tls, client_tls = loopback_tls(tmp_path / "ca") if tls else (None, ClientTls())
    async with trio.open_nursery() as nursery:
        url = await nursery.start(_stalling_peer, data, name, sent, server_tls)
        if tls:
            url = url.replace("http://", "https://")
        async with ClientFactory(timeout=60, tls=client_tls).client(url) as client:
            with trio.fail_after(30):  # far below the read timeout
                with trio.CancelScope() as scope:
                    async def cancel_once_bytes_arrived():
                        await sent.wait()
                        await wait_until(lambda: name.path in rec.sinks
                                         and rec.sinks[name.path].data)
                        scope.cancel()

                    nursery.start_soon(cancel_once_bytes_arrived)
                    await client.fetch_into([name], limits.MAX_SEGMENT_BYTES,
                                            rec.open_sink, rec.settle)
        assert scope.cancelled_caught
        assert rec.settled == []
        assert rec.sinks[name.path].failed is not None
        nursery.cancel_scope.cancel()


async def _dripping_peer(data: bytes, name, task_status) -> None:
    """Sends a batch reply one byte every 50 ms: each read comes well within the read
    timeout, the whole far slower than MIN_RATE."""
    body = frame_header(m.FetchItem(name.path, len(data))) + data

    async def handler(stream):
        await _answer_head(stream, body)
        for i in range(len(body)):
            await stream.send_all(body[i:i + 1])
            await trio.sleep(0.05)

    await _serve(handler, task_status)


async def test_a_peer_sending_slower_than_the_minimum_rate_is_a_peer_error():
    data = os.urandom(1000)
    name = make_name(data, hours_ago(2))
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(_dripping_peer, data, name)
        async with ClientFactory(timeout=0.5).client(url) as client:
            with pytest.raises(PeerError, match="slower than"):
                await client.fetch_into([name], limits.MAX_SEGMENT_BYTES, rec.open_sink,
                                        rec.settle)
        assert rec.settled == []
        nursery.cancel_scope.cancel()


async def test_bytes_after_the_last_answer_are_a_peer_error():
    """A reply whose Content-Length covers more than the frames asked for."""
    data = os.urandom(3000)
    name = make_name(data, hours_ago(2))
    body = frame_header(m.FetchItem(name.path, len(data))) + data + b"trailing junk"

    async def handler(stream):
        conn = await _answer_head(stream, body)
        await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.aclose()

    rec = Recorder()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(_serve, handler)
        async with ClientFactory().client(url) as client:
            with pytest.raises(PeerError, match="after the last"):
                await client.fetch_into([name], limits.MAX_SEGMENT_BYTES, rec.open_sink,
                                        rec.settle)
        # the junk arrived with the segment's bytes: nothing of the reply was settled
        assert rec.settled == []
        nursery.cancel_scope.cancel()


async def test_fetch_threads_do_not_take_the_shared_thread_pool(cluster_factory):
    """More fetches at once than trio's shared worker threads: each fetch thread
    waits for commits that need those threads. Fetch threads have limiters of their
    own, so the catch-up completes (in the shared pool they starved it: every
    download timed out)."""
    async with cluster_factory(2, connect=False, backfill=False, max_concurrency=4) as c:
        a, b = c.nodes
        names = write_segments(c.root(0), 40, hours_ago(3), size=20_000)
        await a.local_files.rescan(announce_new=False)
        trio.to_thread.current_default_thread_limiter().total_tokens = 2
        with trio.fail_after(60):
            (result,) = await b.backfiller.round_all([a.url])
        assert result.total("downloaded") == len(names) and result.failures == 0


def test_a_peer_behind_a_proxy_keeps_the_httpx_fetch(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert connects_directly("http://10.1.2.3:8000")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    assert not connects_directly("http://10.1.2.3:8000")
    assert connects_directly("https://10.1.2.3:8000")  # only plain http goes through it
    assert ClientFactory().client("http://10.1.2.3:8000").fetch_target is None
    monkeypatch.setenv("NO_PROXY", "10.1.2.3")
    assert connects_directly("http://10.1.2.3:8000")
    assert ClientFactory().client("http://10.1.2.3:8000").fetch_target is not None
