"""GETs one segment at a time in worker threads (agent.peers.threaded_gets), as a
catch-up from a wubloader node makes them, and the keep-alive connections every
threaded download shares (agent.peers.threaded_exchange.ConnectionPool): the
restreamer stand-in (tests/legacy_standin.py, its own process), and a hand-made peer
for what it never does (closing idle connections, chunked or short bodies, dripping,
stalling), over loopback HTTP."""

from __future__ import annotations

import datetime as dt
import os
import ssl

import h11
import pytest
import trio

from agent.peers.bandwidth import Bandwidth
from agent.peers.client import ClientFactory, PeerError
from agent.peers.threaded_exchange import READ_BYTES, ConnectionPool
from agent.peers.tls import ClientTls
from conftest import wait_until
from fault_helpers import _read_request, _serve
from helpers import hours_ago, make_name, write_segments
from protocol import limits
from protocol import messages as m
from protocol.bandwidth import TransferClass
from protocol.fetchstream import frame_header
from test_legacy_peers import legacy_node
from test_threaded_fetch import Recorder
from tls_helpers import loopback_tls


class ScriptedPeer:
    """A wubloader-like `/segments/PATH` server (`/v1/segments/PATH` and a batch fetch
    too, as a segsync peer): `files` by path, each answered as
    `how[path]` says (default: a 200 with a Content-Length). Counts connections and
    requests; `close_idle`: closes each connection after one reply without saying so
    (what a server's idle timeout does between two requests)."""

    def __init__(self, files: dict[str, bytes], how: dict[str, str] | None = None,
                 close_idle: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.files, self.how, self.close_idle, self.tls = files, how or {}, close_idle, tls
        self.connections = 0
        self.requests: list[str] = []
        self.stalled = trio.Event()

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await _serve(self.handler, task_status)

    async def handler(self, stream) -> None:
        self.connections += 1
        if self.tls is not None:
            stream = trio.SSLStream(stream, self.tls, server_side=True)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                got = await _read_request(stream, conn)
                if got is None:
                    return
                target = got[0].target.decode()
                self.requests.append(target)
                if target == "/v1/fetch":
                    await self.answer_batch(stream, conn, got[1])
                elif not await self.answer(stream, conn, target.partition("/segments/")[2]):
                    return
                if self.close_idle:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()

    async def answer(self, stream, conn: h11.Connection, path: str) -> bool:
        """Send one reply; False: the connection ends here."""
        data, how = self.files.get(path), self.how.get(path, "ok")
        if data is None:
            await self.send(stream, conn, 404, b"<h1>Not Found</h1>")
            return True
        if how == "chunked":
            await stream.send_all(conn.send(h11.Response(
                status_code=200, headers=[("transfer-encoding", "chunked")])))
            for i in range(0, len(data), 70_000):
                await stream.send_all(conn.send(h11.Data(data=data[i:i + 70_000])))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            return True
        head = h11.Response(status_code=200, headers=[("content-length", str(len(data)))])
        if how == "short":  # promises every byte, sends half, closes
            await stream.send_all(conn.send(head))
            await stream.send_all(conn.send(h11.Data(data=data[:len(data) // 2])))
            return False
        if how == "drip":  # one byte every 50 ms
            await stream.send_all(conn.send(head))
            for i in range(len(data)):
                await stream.send_all(conn.send(h11.Data(data=data[i:i + 1])))
                await trio.sleep(0.05)
            return False
        if how == "stall":  # the head and half the bytes, then nothing (kept open)
            await stream.send_all(conn.send(head))
            await stream.send_all(conn.send(h11.Data(data=data[:len(data) // 2])))
            self.stalled.set()
            await trio.sleep_forever()
        await self.send(stream, conn, 200, data)
        return True

    async def answer_batch(self, stream, conn: h11.Connection, body: bytes) -> None:
        """A batch fetch (POST /v1/fetch) of what `files` holds, framed."""
        request = m.decode(body, m.FetchRequest, limits.MAX_REQUEST_BYTES)
        reply = b"".join(
            frame_header(m.FetchItem(p, len(self.files[p]))) + self.files[p]
            if p in self.files else frame_header(m.FetchMissing(p, "not_found"))
            for p in request.paths)
        await self.send(stream, conn, 200, reply)

    @staticmethod
    async def send(stream, conn: h11.Connection, status: int, body: bytes) -> None:
        headers = [("content-length", str(len(body)))]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))


def segments(count: int, size: int = 50_000) -> dict:
    """`count` segments of random bytes, 2 s apart: {name: bytes} (not on disk)."""
    start = hours_ago(2)
    return {make_name(data, start + dt.timedelta(seconds=2 * i)): data
            for i, data in enumerate(os.urandom(size) for _ in range(count))}


async def get_all(url: str, names, threads: int = 2, factory: ClientFactory | None = None,
                  rec: Recorder | None = None, **options) -> Recorder:
    rec = rec or Recorder()
    async with (factory or ClientFactory()).wubloader_client(url) as client:
        assert client.fetch_target is not None
        await client.get_each_into(list(names), threads, limits.MAX_SEGMENT_BYTES,
                                   rec.open_sink, rec.settle, **options)
    return rec


async def test_segments_from_the_restreamer_stand_in_each_with_its_outcome(tmp_path):
    """Every segment reaches its sink whole, over two keep-alive connections; one
    deleted since the listing is its own PeerError (404), the others go on."""
    root = tmp_path / "wub"
    names = write_segments(root, 7, hours_ago(2), size=300_000)
    names += write_segments(root, 1, hours_ago(1), tag=1, size=READ_BYTES + 200_000)
    gone = names[3]
    (root / gone.path).unlink()
    with legacy_node(root) as wub:
        rec = await get_all(wub.url, names)
        requests = [r for r in wub.requests() if r.startswith("GET /segments/")]
    settled = dict(rec.settled)
    assert len(rec.settled) == len(names)
    for name in names:
        if name == gone:
            e = settled[name.path]
            assert isinstance(e, PeerError) and e.status == 404, e
        else:
            assert settled[name.path] == ("done", (root / name.path).read_bytes())
            assert rec.sinks[name.path].size == len(settled[name.path][1])
    assert gone.path not in rec.sinks  # nothing was opened for it
    assert len(requests) == len(names)
    assert rec.unpaced == sum((root / n.path).stat().st_size for n in names if n != gone)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_connections_are_kept_alive_and_reopened_when_the_peer_closed_them(
        tmp_path, tls):
    """Over TLS too (a wubloader node behind nginx): the client's trust, one handshake
    per connection."""
    files = segments(6)
    by_path = {n.path: d for n, d in files.items()}
    server_tls, client_tls = loopback_tls(tmp_path / "ca") if tls else (None, ClientTls())
    for close_idle, connections in ((False, 1), (True, 6)):
        peer = ScriptedPeer(by_path, close_idle=close_idle, tls=server_tls)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(peer.serve)
            if tls:
                url = url.replace("http://", "https://")
            rec = await get_all(url, files, threads=1, factory=ClientFactory(tls=client_tls))
            nursery.cancel_scope.cancel()
        # closed between two requests: each GET is sent again once on a new connection,
        # and none of them fails
        assert dict(rec.settled) == {n.path: ("done", d) for n, d in files.items()}
        assert peer.connections == connections
        assert len(peer.requests) == len(files)


async def test_chunked_short_and_oversized_replies():
    """A chunked body is read to its end (its size unknown beforehand); a body that
    ends before its Content-Length, and one over the caller's limit (declared, or
    found while reading a chunked one), are their segments' PeerErrors, and the next
    segment comes on a new connection."""
    files = segments(4, size=2000)
    names = list(files)
    by_path = {n.path: d for n, d in files.items()}
    big, big_chunked = os.urandom(4000), os.urandom(4001)
    big_name, big_chunked_name = make_name(big, hours_ago(3)), make_name(big_chunked,
                                                                         hours_ago(4))
    by_path[big_name.path], by_path[big_chunked_name.path] = big, big_chunked
    peer = ScriptedPeer(by_path, {names[0].path: "chunked", names[1].path: "short",
                                  big_chunked_name.path: "chunked"})
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(peer.serve)
        async with ClientFactory().wubloader_client(url) as client:
            await client.get_each_into([*names, big_name, big_chunked_name], 1, 3000,
                                       rec.open_sink, rec.settle)
        nursery.cancel_scope.cancel()
    settled = dict(rec.settled)
    assert settled[names[0].path] == ("done", files[names[0]])
    assert rec.sinks[names[0].path].size is None
    assert isinstance(settled[names[1].path], PeerError)
    assert "ended after 1000 of 2000 bytes" in str(settled[names[1].path])
    assert rec.sinks[names[1].path].failed is settled[names[1].path]
    assert settled[names[2].path] == ("done", files[names[2]])
    assert settled[names[3].path] == ("done", files[names[3]])
    assert "4000 bytes is over the limit" in str(settled[big_name.path])
    assert big_name.path not in rec.sinks
    assert "more than 3000 bytes" in str(settled[big_chunked_name.path])
    assert rec.sinks[big_chunked_name.path].failed is settled[big_chunked_name.path]
    # one connection for the first, one after the short body; the two refused
    # replies each left unread bytes behind
    assert peer.connections == 3
    # every byte that arrived is counted, the short and the oversized reply's too
    # (the one refused by its Content-Length sent none that were read)
    assert rec.unpaced == 2000 + 1000 + 2000 + 2000 + 4001


async def test_a_sink_that_refuses_or_needs_no_more_costs_only_its_segment():
    files = segments(4, size=300_000)
    names = list(files)
    peer = ScriptedPeer({n.path: d for n, d in files.items()})
    rec = Recorder(**{names[0].path: {"refuse_at": 1}, names[1].path: {"enough_at": 1}})
    async with trio.open_nursery() as nursery:
        url = await nursery.start(peer.serve)
        await get_all(url, names, threads=1, rec=rec)
        nursery.cancel_scope.cancel()
    settled = dict(rec.settled)
    assert isinstance(settled[names[0].path], ValueError)
    assert rec.sinks[names[0].path].failed is settled[names[0].path]
    assert settled[names[1].path] == "have" and rec.sinks[names[1].path].failed is None
    assert settled[names[2].path] == ("done", files[names[2]])
    assert settled[names[3].path] == ("done", files[names[3]])
    # the unread rest of each of the first two went with its connection
    assert peer.connections == 3


async def test_a_dripping_peer_is_a_peer_error_and_keep_going_ends_the_thread():
    files = segments(3, size=1000)
    names = list(files)
    peer = ScriptedPeer({n.path: d for n, d in files.items()}, {names[0].path: "drip"})
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(peer.serve)
        async with ClientFactory(timeout=0.5).wubloader_client(url) as client:
            # asked before each segment (in the thread): no more after the first
            await client.get_each_into(names, 1, limits.MAX_SEGMENT_BYTES, rec.open_sink,
                                       rec.settle, keep_going=lambda: not rec.sinks)
        nursery.cancel_scope.cancel()
    [(path, e)] = rec.settled
    assert path == names[0].path and "slower than" in str(e)
    assert rec.sinks[path].failed is e
    assert peer.requests == [f"/segments/{path}"]


@pytest.mark.parametrize("limit", [None, 50e6])
async def test_every_byte_is_counted_once_with_or_without_a_limit(tmp_path, limit):
    root = tmp_path / "wub"
    names = write_segments(root, 4, hours_ago(2), size=400_000)
    bandwidth = Bandwidth(download=limit)
    rec = Recorder()
    with legacy_node(root) as wub:
        async with ClientFactory(bandwidth=bandwidth).wubloader_client(wub.url) as client:
            async def settle(name, outcome, unpaced):
                await rec.settle(name, outcome, unpaced)
                await client.pacing.receive(unpaced, name)  # as the puller does

            await client.get_each_into(names, 2, limits.MAX_SEGMENT_BYTES, rec.open_sink,
                                       settle)
    total = sum((root / n.path).stat().st_size for n in names)
    assert bandwidth.download.scheduler.counters[TransferClass.CATCHUP].bytes == total
    assert rec.unpaced == (total if limit is None else 0)


async def test_cancelling_stops_every_thread_at_once():
    """A peer that stops sending mid-segment, and a read timeout of a minute: the
    cancelled download returns once its sockets are shut down, the stalled
    segment's sink failed, nothing of it settled, and no connection kept."""
    files = segments(2, size=3 * READ_BYTES)
    names = list(files)
    peer = ScriptedPeer({n.path: d for n, d in files.items()},
                        {n.path: "stall" for n in names})
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(peer.serve)
        async with ClientFactory(timeout=60).wubloader_client(url) as client:
            with trio.fail_after(30), trio.CancelScope() as scope:
                async def cancel_once_bytes_arrived():
                    await peer.stalled.wait()
                    await wait_until(lambda: any(s.data for s in rec.sinks.values()))
                    scope.cancel()

                nursery.start_soon(cancel_once_bytes_arrived)
                await client.get_each_into(names, 2, limits.MAX_SEGMENT_BYTES,
                                           rec.open_sink, rec.settle)
            assert client.fetch_target.pool.idle == 0  # a stopped one's is never kept
        assert scope.cancelled_caught
        assert rec.settled == []
        assert any(s.failed is not None for s in rec.sinks.values())
        assert all(s.failed is not None for s in rec.sinks.values() if s.data)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("close_idle", [False, True], ids=["kept", "closed-when-idle"])
async def test_threaded_downloads_share_their_client_s_kept_connections(close_idle):
    """Batch fetches one after another, then GETs, on one client: one connection for
    them all; a peer that closes each connection after its reply (an idle timeout
    between two downloads) costs a new connection each time, and no download."""
    files = segments(6)
    names = list(files)
    peer = ScriptedPeer({n.path: d for n, d in files.items()}, close_idle=close_idle)
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(peer.serve)
        async with ClientFactory().client(url) as client:
            pool = client.fetch_target.pool
            for batch in (names[:2], names[2:4]):
                await client.fetch_into(batch, limits.MAX_SEGMENT_BYTES, rec.open_sink,
                                        rec.settle)
            await client.get_each_into(names[4:], 1, limits.MAX_SEGMENT_BYTES,
                                       rec.open_sink, rec.settle)
            # kept either way: a close is seen only by the next request on it
            assert pool.idle == 1
        assert pool.idle == 0  # closed with the client
        nursery.cancel_scope.cancel()
    assert dict(rec.settled) == {n.path: ("done", d) for n, d in files.items()}
    assert peer.connections == pool.opened == (4 if close_idle else 1)
    assert len(peer.requests) == 4


class FakeConnection:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_the_pool_keeps_a_bounded_number_and_closes_the_rest():
    pool = ConnectionPool(max_idle=2)
    conns = [FakeConnection() for _ in range(3)]
    for conn in conns:
        pool.give(conn)
    assert pool.idle == 2 and [c.closed for c in conns] == [False, False, True]
    assert pool.take() is conns[1]
    pool.close()
    assert pool.idle == 0 and conns[0].closed
    late = FakeConnection()
    pool.give(late)  # given back after the client closed: closed at once
    assert late.closed and pool.take() is None
