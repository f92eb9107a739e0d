"""The dashboard's HTTP side: page, state, coverage maps (own, a peer's, the difference)
and the login of --protect-reads (real agents, real files, real HTTP)."""

from __future__ import annotations

import datetime as dt
import os

import httpx
import trio

from conftest import peer_of, wait_until
from helpers import make_name, touch_tombstone, write_segment_file
from protocol.coverage import A_ONLY, B_ONLY, FULL, HOLE, SAME, TOMBSTONED
from protocol.names import Kind, format_hour

HOLE_MINUTE, TOMB_MINUTE = 12, 40


def hour_start(hours_back: int) -> dt.datetime:
    now = dt.datetime.now(dt.timezone.utc)
    return now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=hours_back)


def write_hour(root, start: dt.datetime, skip_minute: int | None = None,
               tombstone_minute: int | None = None, channel: str = "desertbus"):
    """One hour of 20 s segments (few, to keep the test quick), with an optional hole
    and an optional tombstoned segment; returns the tombstoned name."""
    buried = None
    for i in range(180):
        when = start + dt.timedelta(seconds=20 * i)
        if skip_minute is not None and when.minute == skip_minute:
            continue
        data = f"{channel} {when.isoformat()}".encode() * 20  # same name on every node
        name = make_name(data, when, channel=channel, duration="20.0")
        write_segment_file(root, name, data)
        if tombstone_minute is not None and when.minute == tombstone_minute and buried is None:
            touch_tombstone(root, name)
            buried = name
    return buried


def expected_row(hole=None, tomb=None) -> str:
    row = [FULL] * 60
    if hole is not None:
        row[hole] = HOLE
    if tomb is not None:
        row[tomb] = TOMBSTONED
    return "".join(row)


async def test_page_state_and_own_coverage(cluster_factory):
    async with cluster_factory(2) as c:
        a = c.nodes[0]
        start = hour_start(2)
        write_hour(c.root(0), start, skip_minute=HOLE_MINUTE, tombstone_minute=TOMB_MINUTE)
        await a.local_files.rescan(announce_new=False)
        async with httpx.AsyncClient(base_url=a.url) as http:
            page = await http.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert b'src="/dashboard/dashboard.js"' in page.content
            assert "default-src 'self'" in page.headers["content-security-policy"]
            js = await http.get("/dashboard/dashboard.js")
            assert js.status_code == 200 and b"pollState" in js.content
            assert (await http.get("/dashboard/dashboard.css")).status_code == 200
            assert (await http.get("/dashboard/nothing")).status_code == 404

            state = (await http.get("/dashboard/state")).json()
            assert state["node"] == a.config.node_name
            assert [(p["url"], p["name"]) for p in state["peers"]] == [
                (c.nodes[1].url, c.nodes[1].config.node_name)]
            assert state["peers"][0]["kind"] == "segsync"
            assert state["peers"][0]["reachable"] is True
            assert state["pairs"] == [["desertbus", "source"]]

            cov = (await http.get("/dashboard/coverage", params={"hours": 4})).json()
            [pair] = cov["maps"]
            assert (pair["channel"], pair["quality"]) == ("desertbus", "source")
            assert pair["hours"][0] == format_hour(start)
            assert pair["hours"][-1] == format_hour(start + dt.timedelta(hours=2))
            assert pair["rows"][0] == expected_row(HOLE_MINUTE, TOMB_MINUTE)
            assert set(pair["rows"][1]) == {HOLE}  # the hour after: nothing held yet

            # a new segment is pushed: the latency ring holds it, the map shows it
            later = hour_start(1)
            data = os.urandom(300)
            name = make_name(data, later, duration="20.0")
            write_segment_file(c.root(0), name, data)
            await wait_until(lambda: c.nodes[1].index.has(name, Kind.SEGMENT), timeout=10)
            state = await wait_until_json(http, "/dashboard/state",
                                          lambda s: s["push_latencies"])
            at, seconds = state["push_latencies"][-1]
            assert 0 <= seconds < 10 and abs(at - state["time"]) < 60
            # a's "downloader" (this test, writing final files) records the pair: the
            # page's "Recorded here" table (undeclared: a's config has no `records`)
            state = await wait_until_json(http, "/dashboard/state",
                                          lambda s: s["recorded_pairs"])
            [pair] = state["recorded_pairs"]
            assert (pair["channel"], pair["quality"], pair["declared"]) == (
                "desertbus", "source", False)
            assert abs(pair["last_local"] - state["time"]) < 60


async def wait_until_json(http, url, predicate, timeout=10.0):
    last = None

    async def poll():
        nonlocal last
        last = (await http.get(url)).json()
        return predicate(last)

    with trio.fail_after(timeout):
        while not await poll():
            await trio.sleep(0.05)
    return last


async def test_peer_map_and_difference(cluster_factory):
    # push off: a late watcher event of the files written below must not push them
    async with cluster_factory(2, connect=False, push=False) as c:
        a, b = c.nodes
        start = hour_start(3)
        write_hour(c.root(0), start)
        write_hour(c.root(1), start, skip_minute=HOLE_MINUTE, tombstone_minute=TOMB_MINUTE)
        write_hour(c.root(0), start + dt.timedelta(hours=1), channel="other")
        write_hour(c.root(1), start + dt.timedelta(hours=1), channel="other")
        await a.local_files.rescan(announce_new=False)
        await b.local_files.rescan(announce_new=False)
        # a peer for maps only: no push, its first round an hour away
        await a.set_peers([peer_of(b)])
        peer = b.config.node_name
        async with httpx.AsyncClient(base_url=a.url) as http:
            cov = (await http.get("/dashboard/coverage",
                                  params={"hours": 5, "peer": peer})).json()
            assert cov["node"] == peer and not cov["diff"]
            maps = {m["channel"]: m for m in cov["maps"]}
            assert maps["desertbus"]["rows"][0] == expected_row(HOLE_MINUTE, TOMB_MINUTE)
            assert maps["other"]["rows"][0] == FULL * 60
            # only the one differing hour was listed: equal digests reuse our own spans
            assert listings_served(b) == 1
            own = (await http.get("/dashboard/coverage", params={"hours": 5})).json()
            assert {m["channel"]: m for m in own["maps"]}["other"] == maps["other"]

            diff = (await http.get("/dashboard/coverage",
                                   params={"hours": 5, "peer": peer, "diff": "1"})).json()
            row = {m["channel"]: m for m in diff["maps"]}["desertbus"]["rows"][0]
            assert row[HOLE_MINUTE] == A_ONLY and row[TOMB_MINUTE] == A_ONLY
            assert row.count(SAME) == 58 and B_ONLY not in row

            for params, status in [({"peer": "http://127.0.0.1:1"}, 400),
                                   ({"peer": b.url}, 400),
                                   ({"hours": "0"}, 400), ({"hours": "337"}, 400),
                                   ({"hours": "x"}, 400), ({"diff": "1"}, 400),
                                   ({"diff": "2", "peer": peer}, 400)]:
                r = await http.get("/dashboard/coverage", params=params)
                assert r.status_code == status, params
                assert r.json()["error"]
            b.stop()
            await wait_until_unreachable(b.url)
            r = await http.get("/dashboard/coverage", params={"peer": peer})
            assert r.status_code == 502 and b.url in r.json()["error"]


def listings_served(node) -> float:
    return node.metrics.requests.labels("v1-listing")._value.get()


async def wait_until_unreachable(url):
    async with httpx.AsyncClient() as http:
        with trio.fail_after(10):
            while True:
                try:
                    await http.get(url + "/healthz")
                except httpx.HTTPError:
                    return
                await trio.sleep(0.02)


async def test_protect_reads_login(cluster_factory):
    async with cluster_factory(1, token="s3cret-token", protect_reads=True) as c:
        a = c.nodes[0]
        async with httpx.AsyncClient(base_url=a.url) as http:
            page = await http.get("/")
            assert page.status_code == 401 and b'action="/dashboard/login"' in page.content
            assert (await http.get("/dashboard/state")).status_code == 401
            assert (await http.get("/dashboard/coverage")).status_code == 401
            # the page's code holds no secret: it loads before logging in
            assert (await http.get("/dashboard/dashboard.js")).status_code == 200
            wrong = await http.post("/dashboard/login", data={"token": "guess"})
            assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
            assert (await http.post("/dashboard/login", content=b"\xff" * 5000)).status_code == 413
            ok = await http.post("/dashboard/login", data={"token": "s3cret-token"})
            assert ok.status_code == 303 and ok.headers["location"] == "/"
            cookie = ok.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert "s3cret-token" not in cookie
            # httpx keeps the cookie, as a browser would
            assert (await http.get("/")).status_code == 200
            assert (await http.get("/dashboard/state")).status_code == 200
        async with httpx.AsyncClient(base_url=a.url) as http:
            r = await http.get("/dashboard/state",
                               headers={"authorization": "Bearer s3cret-token"})
            assert r.status_code == 200
            r = await http.get("/dashboard/state", headers={"cookie": "segsync_dashboard=forged"})
            assert r.status_code == 401
