"""The HTTP face: compat endpoints, validation, /v1 error bodies (real agent, real HTTP)."""

import os

import httpx
import msgpack

from helpers import hours_ago, make_name, touch_tombstone, write_segment_file
from protocol import messages as m


async def _ready(node, name):
    await node.local_files.rescan(announce_new=False)


async def test_compat_endpoints(cluster_factory):
    async with cluster_factory(1) as c:
        node = c.nodes[0]
        data = os.urandom(3000)
        name = make_name(data, hours_ago(2))
        gone = make_name(b"gone", hours_ago(2).replace(minute=7))
        write_segment_file(c.root(0), name, data)
        write_segment_file(c.root(0), gone, b"gone")
        touch_tombstone(c.root(0), gone)
        await _ready(node, name)
        async with httpx.AsyncClient(base_url=node.url) as http:
            r = await http.get(f"/files/{name.channel}/{name.quality}")
            assert r.json() == [name.hour]
            base = f"/files/{name.channel}/{name.quality}/{name.hour}"
            assert (await http.get(base)).json() == [name.filename]
            assert (await http.get(base, params={"tombstones": "false"})).json() == [name.filename]
            assert sorted((await http.get(base, params={"tombstones": "true"})).json()) == sorted(
                [name.filename, gone.tombstone_filename])
            r = await http.get(base, params={"tombstones": "yes"})
            assert r.status_code == 400 and "tombstones" in r.json()["error"]
            r = await http.get(f"/segments/{name.path}")
            assert r.status_code == 200
            assert r.headers["content-type"] == "video/mp2t"
            assert r.content == data
            assert (await http.get(f"/segments/{gone.path}")).status_code == 404
            assert (await http.get(f"/v1/segments/{gone.path}")).status_code == 404
            assert (await http.get("/files/nochannel/source")).json() == []
            r = await http.get("/files/..%2f..%2fetc/source")
            assert r.status_code == 400
            r = await http.get("/segments/a/b/c/../../../../etc/passwd")
            assert r.status_code in (400, 404)
            r = await http.post(f"/segments/{name.path}")
            assert r.status_code == 405
            r = await http.get("/healthz")
            assert r.status_code == 200


async def test_v1_errors_are_msgpack_and_change_nothing(cluster_factory):
    async with cluster_factory(1) as c:
        node = c.nodes[0]
        before = sorted(p for p in c.root(0).rglob("*"))
        async with httpx.AsyncClient(base_url=node.url) as http:
            cases = [
                ("POST", "/v1/offer", b"\xc1garbage", 400),
                ("POST", "/v1/offer", msgpack.packb({"v": 1, "type": "offer"}), 400),
                ("POST", "/v1/offer", msgpack.packb({"v": 2, "type": "offer", "path": "x",
                                                     "size": 1}), 400),
                ("POST", "/v1/tombstone", m.encode(m.Offer(
                    make_name(b"x", hours_ago(1)).path, 1)), 400),
                ("POST", "/v1/offer", b"\x00" * (70 * 1024), 413),
                ("GET", "/v1/offer", b"", 405),
                ("POST", "/v1/nothing", b"", 404),
                ("PUT", "/v1/segments/a/b/2020-01-01T00/junk.ts", b"x", 400),
                ("PUT", "/v1/segments/" + make_name(b"t", hours_ago(1), type_="temp").path, b"t",
                 422),
            ]
            for method, path, body, status in cases:
                r = await http.request(method, path, content=body)
                assert r.status_code == status, (path, r.content)
                err = m.decode(r.content, m.Error)
                assert err.message
        assert sorted(p for p in c.root(0).rglob("*")) == before


async def test_upload_requires_length_and_limit(cluster_factory):
    async with cluster_factory(1, max_segment_bytes=1000) as c:
        node = c.nodes[0]
        data = os.urandom(2000)
        name = make_name(data, hours_ago(1))

        async def chunked():
            yield data

        async with httpx.AsyncClient(base_url=node.url) as http:
            r = await http.put(f"/v1/segments/{name.path}", content=chunked())
            assert r.status_code == 411
            r = await http.put(f"/v1/segments/{name.path}", content=data)
            assert r.status_code == 413
        assert not (c.root(0) / name.path).exists()


async def test_digest_and_listing_endpoints(cluster_factory):
    from agent.peers.client import ClientFactory
    from protocol.digests import hour_range

    async with cluster_factory(1) as c:
        node = c.nodes[0]
        data = os.urandom(100)
        name = make_name(data, hours_ago(3))
        write_segment_file(c.root(0), name, data)
        await node.local_files.rescan(announce_new=False)
        client = ClientFactory().client(node.url)
        try:
            first, last = hour_range(hours_ago(0), 24)
            pairs = await client.pair_digests(first, last)
            assert [(p[0], p[1]) for p in pairs.pairs] == [(name.channel, name.quality)]
            hours = await client.hour_digests(name.channel, name.quality, first, last)
            assert [h for h, _ in hours.hours] == [name.hour]
            listing = await client.listing(name.channel, name.quality, name.hour)
            assert listing.names == [name.filename]
            outside = await client.pair_digests("2000-01-01T00", "2000-01-02T00")
            assert outside.pairs == []
        finally:
            await client.aclose()


async def test_server_routes_every_declared_endpoint(cluster_factory):
    """protocol/endpoints.py is the one list of paths: the server answers each of them
    (with a wrong method a 405, never 404 'no such endpoint'), and a status request
    decodes as the typed StatusReply."""
    from protocol import endpoints

    name = make_name(b"x", hours_ago(2))
    request_path = {endpoints.SEGMENTS: endpoints.segment_url(name.path),
                    endpoints.LEGACY_SEGMENTS: f"{endpoints.LEGACY_SEGMENTS}/{name.path}",
                    endpoints.FILES: f"{endpoints.FILES}/{name.channel}/{name.quality}",
                    endpoints.FILE: endpoints.file_url("extras", "emotes", "1/dark-1.0"),
                    endpoints.EXTRAS: endpoints.extras_url("emotes")}
    async with cluster_factory(1) as c:
        node = c.nodes[0]
        async with httpx.AsyncClient(base_url=node.url) as http:
            for endpoint in endpoints.ALL:
                r = await http.request("DELETE", request_path.get(endpoint, endpoint))
                assert r.status_code == 405, (endpoint, r.status_code, r.content)
                assert node.metrics.requests.labels(
                    endpoints.endpoint_label(endpoint))._value.get() >= 1
            r = await http.post(endpoints.STATUS, content=m.encode(m.StatusRequest()))
            status = m.decode(r.content, m.StatusReply, 1 << 20)
            assert (status.url, status.node, status.peers) == (node.url, node.config.node_name, [])
            r = await http.post("/v1%2fstatus", content=m.encode(m.StatusRequest()))
            assert r.status_code == 404
