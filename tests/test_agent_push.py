"""Three real agents on loopback: push replication and tombstones."""

import datetime as dt
import os
import socket

import httpx
import trio

from agent.peers.peer_set import Peer
from conftest import wait_until
from fault_helpers import audit_archive
from helpers import (free_port, hours_ago, make_name, push_state, touch_tombstone,
                     write_segment_file)
from protocol.names import Kind
from protocol.peerkind import PeerKind


def no_temp_files(root):
    return [p for p in root.rglob(".segsync-*")]


async def test_renamed_segment_reaches_every_peer(cluster_factory):
    async with cluster_factory(3) as c:
        data = os.urandom(200_000)
        name = make_name(data, hours_ago(0))
        write_segment_file(c.root(0), name, data)
        for i in (1, 2):
            await wait_until(lambda: (c.root(i) / name.path).exists())
            assert (c.root(i) / name.path).read_bytes() == data
        # no echo: the receivers did not push it back
        await trio.sleep(0.2)
        for node in c.nodes:
            assert all(node.pusher.state(p).queue_depth == 0 for p in node.peers)
        assert c.nodes[1].metrics.received.labels("segment", "stored")._value.get() == 1
        assert c.nodes[0].metrics.received.labels("segment", "stored")._value.get() == 0


async def test_segment_in_new_hour_directory_is_pushed(cluster_factory):
    """A rename into a brand-new hour directory may surface only as a synthetic event."""
    async with cluster_factory(2) as c:
        for i in range(5):
            data = os.urandom(5000)
            name = make_name(data, hours_ago(10 + i))  # each in a new hour directory
            write_segment_file(c.root(0), name, data)
            await wait_until(lambda: (c.root(1) / name.path).exists())


async def test_push_to_a_peer_is_ready_before_the_first_segment(cluster_factory):
    """A peer that was not up when this agent started: as soon as it answers, its kind
    is known and the pusher holds a connection to it, before any segment (the first
    segment's push paid a kind probe and a connect: 10-80 ms more than the next ones
    in bench/cluster_bandwidth.py)."""
    port = free_port()
    async with cluster_factory(1, connect=False) as c:
        node0 = c.nodes[0]
        later = Peer.from_url(f"http://127.0.0.1:{port}", "node1")
        await node0.set_peers([later])  # its pusher starts now: nobody listens there
        node1 = await c.start_node(listen=f"127.0.0.1:{port}")
        # the warm-up: node 1 counts the ping before node 0 has read its answer, so
        # wait for node 0's side, then look at node 1's
        await wait_until(lambda: later in node0.pusher.pushers
                         and node0.pusher.pushers[later].warmed.is_set(), timeout=20)
        assert node1.metrics.requests.labels("healthz")._value.get() >= 1
        assert node0.kinds.known(later) is PeerKind.SEGSYNC
        assert node1.metrics.received.labels("segment", "stored")._value.get() == 0
        data = os.urandom(5000)
        name = make_name(data, hours_ago(0))
        write_segment_file(c.root(0), name, data)
        await wait_until(lambda: (c.root(1) / name.path).exists())


async def test_slow_in_place_write_never_appears_partial(cluster_factory):
    async with cluster_factory(2) as c:
        data = os.urandom(300_000)
        name = make_name(data, hours_ago(0))
        target = c.root(0) / name.path
        target.parent.mkdir(parents=True, exist_ok=True)
        remote = c.root(1) / name.path
        with open(target, "wb") as f:
            for i in range(0, len(data), 30_000):
                f.write(data[i:i + 30_000])
                f.flush()
                await trio.sleep(0.03)
                assert not remote.exists(), "a partial file became visible on the peer"
        await wait_until(remote.exists)
        assert remote.read_bytes() == data
        assert no_temp_files(c.root(1)) == []


async def test_tombstone_reaches_every_node_and_hides(cluster_factory):
    async with cluster_factory(3) as c:
        data = os.urandom(10_000)
        name = make_name(data, hours_ago(1))
        write_segment_file(c.root(0), name, data)
        for i in (1, 2):
            await wait_until(lambda: (c.root(i) / name.path).exists())
        touch_tombstone(c.root(1), name)
        async with httpx.AsyncClient() as http:
            for i in (0, 2):
                await wait_until(lambda: (c.root(i) / name.tombstone_path).exists())
                url = f"{c.nodes[i].url}/files/{name.channel}/{name.quality}/{name.hour}"

                async def listed():
                    r = await http.get(url, params={"tombstones": "false"})
                    assert r.status_code == 200
                    return r.json()

                with trio.fail_after(5):
                    while await listed():
                        await trio.sleep(0.01)
                r = await http.get(url, params={"tombstones": "true"})
                assert r.json() == [name.tombstone_filename]
                r = await http.get(f"{c.nodes[i].url}/segments/{name.path}")
                assert r.status_code == 404
        # segsync never deletes a segment by itself
        assert all((c.root(i) / name.path).exists() for i in range(3))


async def test_tombstone_refuses_later_push(cluster_factory):
    async with cluster_factory(2) as c:
        data = os.urandom(1000)
        name = make_name(data, hours_ago(1))
        touch_tombstone(c.root(1), name)
        await wait_until(lambda: (c.root(0) / name.tombstone_path).exists())
        write_segment_file(c.root(0), name, data)
        await trio.sleep(0.3)
        assert not (c.root(1) / name.path).exists()


async def test_stopped_or_hanging_peer_does_not_delay_others(cluster_factory):
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(1)  # accepts into the backlog, never answers
    try:
        async with cluster_factory(3, request_timeout=30.0) as c:
            await c.stop_node(2)
            a = c.nodes[0]
            await a.set_peers([c.nodes[1].url, c.nodes[2].url,
                               "http://127.0.0.1:%d" % blackhole.getsockname()[1]])
            names = []
            for i in range(20):
                data = os.urandom(20_000)
                name = make_name(data, hours_ago(0).replace(second=i))
                write_segment_file(c.root(0), name, data)
                names.append(name)
            # all reach the healthy peer long before the hanging peer's 30 s timeout
            with trio.fail_after(10):
                await wait_until(lambda: all((c.root(1) / n.path).exists() for n in names))
            assert push_state(a, c.nodes[2].url).last_error is not None
    finally:
        blackhole.close()


async def test_token_required_and_constant(tmp_path, cluster_factory):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    async with cluster_factory(2, token_file=str(token_file)) as c:
        data = os.urandom(4096)
        name = make_name(data, hours_ago(1))
        url = f"{c.nodes[1].url}/v1/segments/{name.path}"
        async with httpx.AsyncClient() as http:
            for headers in ({}, {"authorization": "Bearer wrong"},
                            {"authorization": "s3cret-token"}):
                r = await http.put(url, content=data, headers=headers)
                assert r.status_code == 401
            assert not (c.root(1) / name.path).exists()
            r = await http.get(f"{c.nodes[1].url}/healthz")
            assert r.status_code == 200
        # peers holding the token replicate normally
        write_segment_file(c.root(0), name, data)
        await wait_until(lambda: (c.root(1) / name.path).exists())


async def test_corrupted_push_rejected(cluster_factory):
    async with cluster_factory(1) as c:
        data = os.urandom(50_000)
        name = make_name(data, hours_ago(1))
        url = f"{c.nodes[0].url}/v1/segments/{name.path}"
        async with httpx.AsyncClient() as http:
            r = await http.put(url, content=data[:-1] + bytes([data[-1] ^ 1]))
            assert r.status_code == 422
            assert b"hash" in r.content
        # a body shorter than announced: the sender dies mid-stream
        host, port = c.nodes[0].url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(
            f"PUT /v1/segments/{name.path} HTTP/1.1\r\nhost: x\r\n"
            f"content-length: {len(data) + 5}\r\n\r\n".encode() + data)
        await stream.aclose()
        await wait_until(lambda: c.nodes[0].metrics.rejected.labels("client_gone")._value.get())
        assert not (c.root(0) / name.path).exists()
        assert no_temp_files(c.root(0)) == []
        assert c.nodes[0].metrics.hash_mismatches.labels("push")._value.get() == 1
        # and it keeps serving
        async with httpx.AsyncClient() as http:
            r = await http.put(url, content=data)
            assert r.status_code == 200
        assert (c.root(0) / name.path).read_bytes() == data


async def test_offer_replies(cluster_factory):
    from agent.peers.client import ClientFactory

    async with cluster_factory(1) as c:
        data = os.urandom(100)
        name = make_name(data, hours_ago(1))
        client = ClientFactory().client(c.nodes[0].url)
        node = c.nodes[0]
        try:
            assert await client.offer(name, len(data)) == "want"
            # offers are answered from the index (no disk lookup on the push path):
            # what the watcher has seen
            write_segment_file(c.root(0), name, data)
            await wait_until(lambda: node.index.has(name, Kind.SEGMENT))
            assert await client.offer(name, len(data)) == "have"
            touch_tombstone(c.root(0), name)
            await wait_until(lambda: node.index.has(name, Kind.TOMBSTONE))
            assert await client.offer(name, len(data)) == "tombstoned"
        finally:
            await client.aclose()


async def test_an_offer_answered_before_the_index_knew_refuses_at_the_upload(
        cluster_factory, tmp_path):
    """The index lags the disk by the watcher's latency: a tombstone touched a moment
    ago may not be indexed yet when an offer comes. The offer is then answered want,
    and the upload that follows is refused by the disk check: nothing is stored."""
    from agent.peers.client import ClientFactory

    data = os.urandom(5000)
    name = make_name(data, hours_ago(1))
    later = make_name(os.urandom(100), hours_ago(1))
    async with cluster_factory(0) as c:
        # the hour directory is there before the agent starts: a new one would bring
        # walks of it (watchdog's and the agent's), which may find this tombstone
        # again after the later one below, and index it again once it was taken out
        (c.base / "node0" / name.path).parent.mkdir(parents=True)
        node = await c.start_node()
        touch_tombstone(c.root(0), name)
        await wait_until(lambda: node.index.has(name, Kind.TOMBSTONE))
        # the touch makes more than one event (create, close); the watcher hands them
        # over in order, so once a later tombstone is indexed, none is left
        touch_tombstone(c.root(0), later)
        await wait_until(lambda: node.index.has(later, Kind.TOMBSTONE))
        node.index.discard(name, Kind.TOMBSTONE)  # as if the watcher had not seen it yet
        source = tmp_path / "copy.ts"
        source.write_bytes(data)
        client = ClientFactory().client(node.url)
        try:
            assert await client.offer(name, len(data)) == "want"
            status, _ = await client.upload(name, source)
        finally:
            await client.aclose()
        assert status == "tombstoned"
        assert not (c.root(0) / name.path).exists()
        assert audit_archive(c.root(0)).temps == []


async def test_peers_file_reload(tmp_path, cluster_factory):
    async with cluster_factory(2, connect=False) as c:
        peers_file = tmp_path / "peers"
        peers_file.write_text(f"# peers\n{c.nodes[0].url}\n")
        a = await c.start_node(peers_file=str(peers_file))
        assert [p.url for p in a.pusher.pushers] == [c.nodes[0].url]
        peers_file.write_text(f"{c.nodes[0].url}\n{c.nodes[1].url}  # second\n")
        await wait_until(lambda: len(a.pusher.pushers) == 2, timeout=5)
        peers_file.write_text("not a url\n")
        await trio.sleep(1.5)
        assert len(a.pusher.pushers) == 2  # kept the last good list
        data = os.urandom(100)
        name = make_name(data, hours_ago(1))
        write_segment_file(c.root(2), name, data)
        await wait_until(lambda: (c.root(1) / name.path).exists())


async def test_a_queued_segment_gone_or_tombstoned_before_its_upload_sends_no_bytes(
        cluster_factory):
    """A segment's size is measured when it is announced, so its push needs no look at
    the disk before the offer; one removed since then is skipped when the upload
    opens it, one tombstoned since then is refused by the peer or withdrawn before
    its first byte. The peer stores neither."""
    async with cluster_factory(2) as c:
        a, b = c.nodes
        label = a.peers.by_url(b.url).name

        def pushes(outcome: str) -> float:
            return a.metrics.pushes.labels(label, "segment", outcome)._value.get()

        gone = make_name(os.urandom(100), hours_ago(1))
        a.pusher.push(gone, Kind.SEGMENT, trio.current_time(), 100)
        await wait_until(lambda: pushes("skipped") == 1)

        data = os.urandom(2000)
        hidden = make_name(data, hours_ago(1) + dt.timedelta(seconds=4))
        touch_tombstone(c.root(0), hidden)
        write_segment_file(c.root(0), hidden, data)  # never announced: tombstoned
        await wait_until(lambda: a.index.has(hidden, Kind.SEGMENT))
        a.pusher.push(hidden, Kind.SEGMENT, trio.current_time(), len(data))
        await wait_until(lambda: pushes("skipped") + pushes("tombstoned") == 2)
        assert pushes("error") == 0
        assert not (c.root(1) / gone.path).exists()
        assert not (c.root(1) / hidden.path).exists()


async def test_a_refused_push_does_not_hide_the_same_segment_written_later(cluster_factory):
    """A peer's upload with bad bytes is refused; when the local downloader then writes
    that segment, it is news (pushed on), not an echo of the refused upload."""
    async with cluster_factory(2, backfill=False) as c:
        a, b = c.nodes
        data = os.urandom(3000)
        name = make_name(data, hours_ago(1))
        async with httpx.AsyncClient(base_url=a.url) as http:
            r = await http.put(f"/v1/segments/{name.path}", content=os.urandom(3000))
        assert r.status_code == 422  # hash mismatch
        write_segment_file(c.root(0), name, data)
        await wait_until(lambda: (c.root(1) / name.path).exists())
        assert (c.root(1) / name.path).read_bytes() == data
