"""Batch fetch (POST /v1/fetch): many segments in one response (real agents, real HTTP)."""

from __future__ import annotations

import datetime as dt
import os

import httpx
import msgpack
import pytest
import trio

from agent.peers.client import ClientFactory, PeerError
from conftest import wait_until
from fault_helpers import LyingPeer, audit_archive
from helpers import (
    hours_ago,
    make_name,
    replicable_state,
    touch_tombstone,
    write_segment_file,
    write_segments,
)
from protocol import limits
from protocol import messages as m
from protocol.fetchstream import FetchStreamReader, ItemData, ItemEnd, ItemMissing, ItemStart


def _parse(paths: list[str], body: bytes) -> dict:
    """The reply parsed by the protocol reader: path -> bytes, or the missing reason."""
    reader = FetchStreamReader(paths)
    out: dict = {}
    current = None
    for event in reader.feed(body):
        if isinstance(event, ItemStart):
            current, out[event.path] = event.path, b""
        elif isinstance(event, ItemData):
            out[current] += bytes(event.data)
        elif isinstance(event, ItemMissing):
            out[event.path] = event.reason
        else:
            assert isinstance(event, ItemEnd) and event.path == current
    reader.finish()
    return out


async def test_batch_reply_frames_each_segment_in_order(cluster_factory):
    async with cluster_factory(1) as c:
        node = c.nodes[0]
        names = write_segments(c.root(0), 4, hours_ago(3))
        empty = make_name(b"", hours_ago(3) + dt.timedelta(seconds=30))
        write_segment_file(c.root(0), empty, b"")
        touch_tombstone(c.root(0), names[1])
        absent = make_name(b"never here", hours_ago(3) + dt.timedelta(seconds=40))
        await node.local_files.rescan(announce_new=False)
        asked = [names[3], absent, names[0], names[1], empty, names[2]]
        paths = [n.path for n in asked]
        async with httpx.AsyncClient(base_url=node.url) as http:
            r = await http.post("/v1/fetch", content=m.encode(m.FetchRequest(paths)))
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-segsync-fetch"
        assert int(r.headers["content-length"]) == len(r.content)
        got = _parse(paths, r.content)
        assert list(got) == paths
        for n in (names[3], names[0], names[2]):
            assert got[n.path] == (c.root(0) / n.path).read_bytes()
        assert got[empty.path] == b""
        assert got[absent.path] == "not_found"
        assert got[names[1].path] == "not_found"  # tombstoned: never served
        served = node.metrics.bytes.labels("served")._value.get()
        assert served == sum((c.root(0) / n.path).stat().st_size for n in names if n != names[1])


async def test_batch_requests_that_are_refused_change_nothing(cluster_factory):
    async with cluster_factory(1) as c:
        node = c.nodes[0]
        (name,) = write_segments(c.root(0), 1, hours_ago(2))
        await node.local_files.rescan(announce_new=False)
        before = replicable_state(c.root(0))
        too_many = [make_name(bytes([i]), hours_ago(2) + dt.timedelta(seconds=i)).path
                    for i in range(limits.MAX_FETCH_PATHS + 1)]
        async with httpx.AsyncClient(base_url=node.url) as http:
            cases = [
                b"\xc1not msgpack",
                msgpack.packb({"v": 1, "type": "fetch_request", "paths": []}),
                m.encode(m.FetchRequest(too_many)),
                m.encode(m.FetchRequest([name.tombstone_path])),
                m.encode(m.FetchRequest(["../../etc/passwd"])),
                msgpack.packb({"v": 1, "type": "fetch_request", "paths": name.path}),
                m.encode(m.ListingRequest(name.channel, name.quality, name.hour)),
            ]
            for body in cases:
                r = await http.post("/v1/fetch", content=body)
                assert r.status_code == 400, body
                assert m.decode(r.content, m.Error).code == "bad_message"
            r = await http.get("/v1/fetch")
            assert r.status_code == 405
            r = await http.post("/v1/fetch", content=b"x" * (limits.MAX_REQUEST_BYTES + 1))
            assert r.status_code == 413
            # and it still answers a good one
            r = await http.post("/v1/fetch", content=m.encode(m.FetchRequest([name.path])))
            assert _parse([name.path], r.content) == {
                name.path: (c.root(0) / name.path).read_bytes()}
        assert replicable_state(c.root(0)) == before


async def test_batch_fetch_needs_the_token(cluster_factory, tmp_path):
    async with cluster_factory(1, token="s3cret") as c:  # noqa: S106 - a test secret
        node = c.nodes[0]
        (name,) = write_segments(c.root(0), 1, hours_ago(2))
        await node.local_files.rescan(announce_new=False)
        body = m.encode(m.FetchRequest([name.path]))
        async with httpx.AsyncClient(base_url=node.url) as http:
            assert (await http.post("/v1/fetch", content=body)).status_code == 401
            r = await http.post("/v1/fetch", content=body,
                                headers={"authorization": "Bearer s3cret"})
            assert r.status_code == 200


async def test_client_yields_segments_and_skips_what_a_consumer_leaves(cluster_factory):
    async with cluster_factory(1) as c:
        node = c.nodes[0]
        names = write_segments(c.root(0), 3, hours_ago(2), size=300_000)
        absent = make_name(b"absent", hours_ago(2) + dt.timedelta(seconds=50))
        await node.local_files.rescan(announce_new=False)
        client = ClientFactory().client(node.url)
        try:
            asked = [names[0], absent, names[1], names[2]]
            seen = []
            async with client.fetch(asked, limits.MAX_SEGMENT_BYTES) as items:
                async for name, size, chunks in items:
                    if chunks is None:
                        seen.append((name, None))
                    elif name == names[1]:
                        seen.append((name, "left unread"))  # the client skips its bytes
                    else:
                        data = b"".join([bytes(x) async for x in chunks])
                        assert len(data) == size
                        seen.append((name, data))
            assert seen == [(names[0], (c.root(0) / names[0].path).read_bytes()),
                            (absent, None), (names[1], "left unread"),
                            (names[2], (c.root(0) / names[2].path).read_bytes())]
            # a segment over the caller's limit is refused before any byte of it is used
            with pytest.raises(PeerError, match="over the limit"):
                async with client.fetch(names, 1000) as items:
                    async for _ in items:
                        pass
        finally:
            await client.aclose()


@pytest.mark.parametrize("batch", [True, False])
async def test_backfill_uses_batches_and_falls_back_for_older_peers(cluster_factory, batch):
    """A peer from before batch fetch answers 404: the puller fetches one by one."""
    fake = [make_name(os.urandom(64), hours_ago(3) + dt.timedelta(seconds=2 * i))
            for i in range(5)]
    liar = LyingPeer(fake, "mismatch", batch=batch)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(liar.run)
        async with cluster_factory(1, backfill=False) as c:
            node = c.nodes[0]
            (result,) = await node.backfiller.round_all([url])
            assert result.total("hash_mismatch") == len(fake)
            assert liar.downloads == len(fake)
            assert replicable_state(c.root(0)) == {}
        nursery.cancel_scope.cancel()


async def test_a_broken_batch_is_one_failure_not_one_per_segment(cluster_factory):
    """Each batch reply breaks off: every segment of it failed, but it is one broken
    exchange. Four in a row stay under the limit (5) that ends a unit for the round,
    so every batch is tried; counting per segment, the second batch would end it."""
    fake = [make_name(os.urandom(64), hours_ago(3) + dt.timedelta(seconds=2 * i))
            for i in range(12)]
    liar = LyingPeer(fake, "cut", batch=True)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(liar.run)
        # one download slot: the 12 segments go in 4 batches of 3, one after the other
        async with cluster_factory(1, backfill=False, max_concurrency=1) as c:
            node = c.nodes[0]
            (result,) = await node.backfiller.round_all([url])
            (stats,) = result.pairs.values()
            assert liar.downloads == len(fake)
            assert stats.failed == len(fake) and stats.error is None
            assert replicable_state(c.root(0)) == {}
            assert audit_archive(c.root(0)).temps == []
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("threads", [True, False], ids=["threaded", "httpx"])
async def test_backfill_between_real_agents_goes_in_batches(cluster_factory, monkeypatch,
                                                            threads):
    """`httpx`: as from a node behind a proxy (`connects_directly` says so): the
    batch fetch stays on httpx."""
    if not threads:
        monkeypatch.setattr("agent.peers.client.connects_directly", lambda url: False)
    async with cluster_factory(2, connect=False, backfill=False) as c:
        a, b = c.nodes
        names = write_segments(c.root(0), 40, hours_ago(5))
        await a.local_files.rescan(announce_new=False)
        async with b.backfiller.clients.client(a.url) as client:
            assert (client.fetch_target is not None) == threads
        (result,) = await b.backfiller.round_all([a.url])
        assert result.total("downloaded") == 40 and result.failures == 0
        assert replicable_state(c.root(1)) == replicable_state(c.root(0))
        assert all((c.root(1) / n.path).exists() for n in names)
        # in batches: a few batch requests, no single downloads
        requests = a.metrics.requests
        assert requests.labels("v1-segments")._value.get() == 0
        batches = requests.labels("v1-fetch")._value.get()
        assert 1 <= batches <= len(names) // 2, batches


async def test_client_refuses_bytes_after_the_last_answer():
    """A peer whose reply goes on after the last frame: a PeerError, not silence."""
    from fault_helpers import FETCH_STREAM, _read_request, _respond, _serve
    import h11
    from protocol.fetchstream import frame_header

    data = os.urandom(3000)
    name = make_name(data, hours_ago(2))

    async def handler(stream):
        conn = h11.Connection(h11.SERVER)
        await _read_request(stream, conn)
        body = frame_header(m.FetchItem(name.path, len(data))) + data + b"trailing junk"
        await _respond(stream, conn, 200, body, FETCH_STREAM)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        url = await nursery.start(_serve, handler)
        client = ClientFactory().client(url)
        got = []
        try:
            with pytest.raises(PeerError, match="after the last"):
                async with client.fetch([name], limits.MAX_SEGMENT_BYTES) as items:
                    async for _, size, chunks in items:
                        got.append(b"".join([bytes(x) async for x in chunks]))
        finally:
            await client.aclose()
        # the junk may arrive with the segment's bytes (then nothing of the reply is
        # used) or after them; either way no byte of it reaches a consumer
        assert got in ([], [data])
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("batch", [True, False])
async def test_server_stops_reading_files_for_a_client_that_left(cluster_factory, batch):
    async with cluster_factory(1) as c:
        node = c.nodes[0]
        names = write_segments(c.root(0), 12, hours_ago(2), size=4 * 2**20)
        await node.local_files.rescan(announce_new=False)
        host, port = node.url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        if batch:
            body = m.encode(m.FetchRequest([n.path for n in names]))
            request = (b"POST /v1/fetch HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
                       % len(body) + body)
        else:
            request = f"GET /v1/segments/{names[0].path} HTTP/1.1\r\nhost: x\r\n\r\n".encode()
        await stream.send_all(request)
        assert await stream.receive_some(1000)  # the answer started
        await stream.aclose()
        gone = node.metrics.rejected.labels("client_gone")
        await wait_until(lambda: gone._value.get() == 1)
        served = node.metrics.bytes.labels("served")._value.get()
        await trio.sleep(0.3)
        # it stopped: far less than asked was read, and nothing more since
        assert node.metrics.bytes.labels("served")._value.get() == served
        assert served < (12 if batch else 1) * 4 * 2**20 / 2
