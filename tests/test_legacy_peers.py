"""Wubloader (legacy) peers: real agents pulling from a stand-in of wubloader's
restreamer read API (tests/legacy_standin.py, its own process) on loopback."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from agent.peers.client import PeerError
from agent.config import ConfigError, build_config, load_toml
from agent.peers.kinds import PeerKinds
from agent.peers.peer_set import Peer, PeerKind, PeerSet
from agent.commands.status_view import render_status
from conftest import peer_of, wait_until
from helpers import free_port, hours_ago, replicable_state, touch_tombstone, write_segments
from test_metrics import scrape
from test_tools import run_cli
from protocol.names import Kind

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(REPO, "tests", "legacy_standin.py")
PUSH_REQUESTS = ("/v1/offer", "/v1/segments", "/v1/tombstone")


@dataclass
class Legacy:
    url: str
    root: Path
    log: Path

    def requests(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def pushes(self) -> list[str]:
        return [r for r in self.requests()
                if r.startswith(("PUT", "POST")) and any(p in r for p in PUSH_REQUESTS)]


@contextmanager
def legacy_node(root: Path, *args: str):
    """The stand-in serving `root`, in a process of its own, until the block ends."""
    root.mkdir(exist_ok=True)
    log = root.parent / f"{root.name}.requests"
    proc = subprocess.Popen([sys.executable, STANDIN, "--root", str(root), "--log", str(log),
                             *args], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        port = int(proc.stdout.readline())
        yield Legacy(f"http://127.0.0.1:{port}", root, log)
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def temp_files(root: Path) -> list:
    return [p for p in root.rglob("*") if p.name.startswith(".segsync-") or "-temp-" in p.name]


def wubloader_archive(root: Path) -> list:
    """Segments in three hours, one tombstoned (segment still on disk), a lone tombstone,
    a wubloader temp file, a hidden file and a chat quality."""
    names = (write_segments(root, 4, hours_ago(5), 1) + write_segments(root, 3, hours_ago(3), 2)
             + write_segments(root, 2, hours_ago(1), 3))
    touch_tombstone(root, names[0])
    lone = write_segments(root / "elsewhere", 1, hours_ago(2), 4)[0]
    touch_tombstone(root, lone)
    hour_dir = root / names[4].hour_path
    (hour_dir / f"{names[4].start:%M:%S.%f}-2.0-temp-2f1c7e0e-6b7d-4f8e-9a0b-1c2d3e4f5a6b.ts"
     ).write_bytes(b"half")
    (hour_dir / ".hidden.ts").write_bytes(b"x")
    chat = root / names[0].channel / "chat" / names[0].hour
    chat.mkdir(parents=True)
    (chat / "00:00-abc.json").write_text("[]")
    return names


def kind_of(node, url: str) -> PeerKind | None:
    return node.kinds.known(node.peers.peer_for(url))


@pytest.mark.parametrize("threads", [True, False], ids=["threaded", "httpx"])
async def test_catch_up_from_a_legacy_peer(cluster_factory, tmp_path, monkeypatch, threads):
    """`httpx`: as from a node behind a proxy (`connects_directly` says so): the GETs
    stay on httpx."""
    if not threads:
        monkeypatch.setattr("agent.peers.client.connects_directly", lambda url: False)
    with legacy_node(tmp_path / "wub") as wub:
        names = wubloader_archive(wub.root)
        async with cluster_factory(1, connect=False, backfill=False) as c:
            node = c.nodes[0]
            await node.set_peers([Peer.from_url(wub.url, "wub1")])
            async with node.backfiller.clients.wubloader_client(wub.url) as client:
                assert (client.fetch_target is not None) == threads
            [result] = await node.backfiller.round_all([wub.url])
            assert result.ok, result.error
            assert replicable_state(c.root(0)) == replicable_state(wub.root)
            assert result.total("downloaded") == len(names) - 1  # the tombstoned one not
            assert result.total("tombstones") == 2
            assert not (c.root(0) / names[0].path).exists()
            assert not any(p.parent.name == "chat" for p in c.root(0).rglob("*"))
            assert temp_files(c.root(0)) == []
            # metric labels are the peer's name
            samples = await scrape(node)
            stored = ("segsync_pulls_total", frozenset(
                {"peer": "wub1", "kind": "segment", "outcome": "stored"}.items()))
            assert samples[stored] == len(names) - 1
            probes = await node.status.probe_peers()  # no /healthz there: its /files answers
            assert probes == {wub.url: None}
            status = node.status.report(probes)
            [peer] = status.peers
            assert peer.kind == "wubloader" and peer.reachable and peer.name == "wub1"
            assert "wubloader" in render_status(status)
            # the dashboard draws maps of segsync peers only
            async with httpx.AsyncClient(base_url=node.url) as http:
                r = await http.get("/dashboard/coverage", params={"peer": "wub1"})
            assert r.status_code == 400 and "wubloader peer" in r.text, r.text
            # in sync: the next round lists again (no digests) but fetches nothing
            [again] = await node.backfiller.round_all([wub.url])
            assert again.ok and again.total("downloaded") == 0 and again.total("missing") == 0
            # hours outside --backfill-hours are not even listed
            node.backfiller.settings = dataclasses.replace(node.backfiller.settings, hours=2)
            [short] = await node.backfiller.round_all([wub.url])
            assert short.ok and short.total("hours_listed") == 2  # 1 and 2 hours ago
            assert wub.pushes() == []
            assert node.pusher.state(node.peers.by_url(wub.url)).queue_depth == 0


async def test_recent_segments_wait_for_a_later_round(cluster_factory, tmp_path):
    with legacy_node(tmp_path / "wub") as wub:
        now = dt.datetime.now(dt.timezone.utc)
        recent = write_segments(wub.root, 2, now - dt.timedelta(seconds=40), 1)
        old = write_segments(wub.root, 2, now - dt.timedelta(minutes=30), 2)
        async with cluster_factory(1, connect=False, backfill=False,
                                   recent_window=120) as c:
            node = c.nodes[0]
            [result] = await node.backfiller.round_all([wub.url])
            assert result.ok, result.error
            assert result.total("skipped_recent") == 2 and result.total("downloaded") == 2
            assert all((c.root(0) / n.path).exists() for n in old)
            assert not any((c.root(0) / n.path).exists() for n in recent)


async def test_tombstones_hide_what_we_hold(cluster_factory, tmp_path):
    with legacy_node(tmp_path / "wub") as wub:
        async with cluster_factory(1, connect=False, backfill=False) as c:
            node = c.nodes[0]
            ours = write_segments(c.root(0), 3, hours_ago(2), 1)
            await wait_until(lambda: all(node.index.has(n, Kind.SEGMENT) for n in ours))
            for name in ours:
                path = wub.root / name.path
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes((c.root(0) / name.path).read_bytes())
            touch_tombstone(wub.root, ours[1])
            [result] = await node.backfiller.round_all([wub.url])
            assert result.ok, result.error
            assert result.total("tombstones") == 1 and result.total("downloaded") == 0
            assert (c.root(0) / ours[1].format(Kind.TOMBSTONE)).exists()
            assert node.index.has(ours[1], Kind.TOMBSTONE)
            assert replicable_state(c.root(0)) == replicable_state(wub.root)


async def test_segment_deleted_between_listing_and_download(cluster_factory, tmp_path):
    root = tmp_path / "wub"
    names = write_segments(root, 5, hours_ago(2), 1)
    gone = names[2]
    with legacy_node(root, "--delete-on-list", gone.filename) as wub:
        async with cluster_factory(1, connect=False, backfill=False) as c:
            node = c.nodes[0]
            [result] = await node.backfiller.round_all([wub.url])
            assert result.total("downloaded") == 4 and result.total("failed") == 1
            assert not (c.root(0) / gone.path).exists()
            assert temp_files(c.root(0)) == []
            [again] = await node.backfiller.round_all([wub.url])  # no longer listed
            assert again.ok and again.total("failed") == 0 and again.total("missing") == 0
            assert replicable_state(c.root(0)) == replicable_state(wub.root)


async def test_garbage_html_and_errors_fail_the_round_and_change_nothing(
        cluster_factory, tmp_path):
    source = tmp_path / "source"
    write_segments(source, 3, hours_ago(2), 1)
    for fault in ("html", "garbage", "error500"):
        with legacy_node(source, "--fault", fault) as wub:
            for kind in ("auto", "wubloader", "legacy"):
                async with cluster_factory(1, connect=False, backfill=False,
                                           peer_kinds={wub.url: kind}) as c:
                    node = c.nodes[0]
                    [result] = await node.backfiller.round_all([wub.url])
                    assert not result.ok, (fault, kind)
                    why = result.error
                    if kind == "auto":
                        assert "cannot tell its kind" in why, why
                    elif fault == "error500":
                        assert "HTTP 500" in why, why
                    else:
                        assert "not JSON" in why, why
                    assert replicable_state(c.root(0)) == {}
                    assert temp_files(c.root(0)) == []
                    for p in list(c.root(0).iterdir()):
                        os.rename(p, tmp_path / f"{fault}-{kind}-{p.name}")  # fresh next time


async def test_bad_segment_bytes_never_become_visible(cluster_factory, tmp_path):
    """Listings fine, but /segments answers an HTML page with 200, or 500s."""
    source = tmp_path / "source"
    names = write_segments(source, 7, hours_ago(2), 1)
    for fault in ("html", "error500"):
        with legacy_node(source, "--fault", fault, "--fault-prefix", "/segments/") as wub:
            async with cluster_factory(1, connect=False, backfill=False) as c:
                node = c.nodes[0]
                [result] = await node.backfiller.round_all([wub.url])
                if fault == "html":  # the peer answered: each is a mismatch, not an outage
                    assert result.ok and result.total("hash_mismatch") == 7, result.error
                else:  # five broken exchanges in a row end the unit for this round
                    assert not result.ok and "HTTP 500" in result.error, result.error
                    assert 5 <= result.total("failed") <= 7
                assert result.total("downloaded") == 0
                assert not any((c.root(0) / n.path).exists() for n in names)
                assert temp_files(c.root(0)) == []
                for p in list(c.root(0).iterdir()):
                    os.rename(p, tmp_path / f"{fault}-{p.name}")  # a fresh root next time


async def test_oneshot_backfill_from_a_legacy_url(tmp_path):
    with legacy_node(tmp_path / "wub") as wub:
        wubloader_archive(wub.root)
        new_root = tmp_path / "new"
        new_root.mkdir()
        proc = await trio.run_process(
            [sys.executable, "-m", "agent.commands.cli", "backfill", "--root", str(new_root),
             "--from", wub.url, "--recent-window", "0", "--backfill-hours", "48"],
            cwd=REPO, capture_stdout=True, capture_stderr=True, check=False)
        out = proc.stdout.decode()
        assert proc.returncode == 0, (out, proc.stderr.decode())
        assert "no failures" in out and wub.url in out
        assert replicable_state(new_root) == replicable_state(wub.root)
        assert wub.pushes() == []


async def test_mixed_cluster_converges_and_the_legacy_node_gets_no_push(
        cluster_factory, tmp_path):
    with legacy_node(tmp_path / "wub") as wub:
        on_legacy = write_segments(wub.root, 4, hours_ago(3), 1)
        async with cluster_factory(2, connect=False, backfill=False) as c:
            a, b = c.nodes
            for node, other in ((a, b), (b, a)):
                await node.set_peers([peer_of(other), wub.url])
            early = write_segments(c.root(0), 3, hours_ago(2), 2)  # kinds not known yet
            await wait_until(lambda: all((c.root(1) / n.path).exists() for n in early))
            for node in (a, b):
                [r] = await node.backfiller.round_all([wub.url])
                assert r.ok, r.error
            late = write_segments(c.root(1), 2, hours_ago(1), 3)  # kinds known: pushed to a
            touch_tombstone(c.root(0), early[0])
            await wait_until(lambda: all((c.root(0) / n.path).exists() for n in late))
            await wait_until(lambda: (c.root(1) / early[0].format(Kind.TOMBSTONE)).exists())
            expected = replicable_state(c.root(0))
            assert replicable_state(c.root(1)) == expected
            assert all(f"{n.hour_path}/{n.filename}" in expected for n in on_legacy)
            for node, other in ((a, b), (b, a)):
                kinds = {p.url: p.kind for p in node.status.report().peers}
                assert kinds == {wub.url: "wubloader", other.url: "segsync"}
            # the legacy node was only read from (and probed): never pushed to
            assert wub.pushes() == [], wub.pushes()
            assert all(r.startswith("GET ") or r.startswith("POST /v1/pair-digests")
                       for r in wub.requests()), wub.requests()
            assert not any(r.startswith("POST /v1/offer") for r in wub.requests())


# ---- the kind registry (the real probe runs in every test above) ----

async def test_peer_kinds_probe_once_remember_and_reprobe_a_legacy_peer(autojump_clock):
    calls = []
    answers = iter([(PeerKind.WUBLOADER, "no /v1, /files is a list"),
                    (PeerKind.SEGSYNC, "/v1 answered")])

    async def probe(peer):
        calls.append(peer.url)
        await trio.sleep(1)
        return next(answers)

    x = Peer.from_url("http://x")
    peers = PeerSet([x])
    kinds = PeerKinds(peers, probe, reprobe_after=600)
    async with trio.open_nursery() as nursery:  # concurrent callers share one probe
        for _ in range(5):
            nursery.start_soon(kinds.kind, x)
    assert calls == ["http://x"] and kinds.known(x) is PeerKind.WUBLOADER
    assert peers.capabilities(x).kind is PeerKind.WUBLOADER  # kept with the peer
    await trio.sleep(599)
    assert await kinds.kind(x) is PeerKind.WUBLOADER and len(calls) == 1
    await trio.sleep(1)  # the node may have moved to segsync meanwhile
    assert await kinds.kind(x) is PeerKind.SEGSYNC and len(calls) == 2
    assert await kinds.kind(x) is PeerKind.SEGSYNC and len(calls) == 2  # kept
    kinds.forget(x)
    assert kinds.known(x) is None
    peers.set_source("static", [])  # a peer that leaves the set takes its kind along
    assert peers.capabilities(x).kind is None


async def test_peer_kinds_unknown_is_an_error_and_configured_kinds_never_probe(
        autojump_clock):
    async def probe(peer):
        return None, "/v1: ConnectError"

    peers = PeerSet([Peer.from_url("http://down")], kinds={"http://old": PeerKind.WUBLOADER})
    peers.set_source("file", [Peer.from_url("http://old")])
    kinds = PeerKinds(peers, probe)
    with pytest.raises(PeerError, match="cannot tell its kind: /v1: ConnectError"):
        await kinds.kind(peers.by_url("http://down"))
    assert kinds.known(peers.by_url("http://down")) is None
    old = peers.by_url("http://old")  # the config's kind, whichever source lists it
    assert old.kind is PeerKind.WUBLOADER
    assert await kinds.kind(old) is PeerKind.WUBLOADER
    assert peers.peer_for("http://old/") == old


def test_peer_kinds_config(tmp_path):
    cfg = build_config(dict(root=tmp_path, peer_kinds={"http://a:8080/": "legacy",
                                                       "http://b": "segsync"}))
    assert cfg.peer_kinds == {"http://a:8080": PeerKind.WUBLOADER,
                              "http://b": PeerKind.SEGSYNC}
    for bad in ({"http://a": "wubloaders"}, {"ftp://a": "wubloader"}, ["http://a"]):
        with pytest.raises(ConfigError, match="peer-kinds"):
            build_config(dict(root=tmp_path, peer_kinds=bad))
    toml = tmp_path / "c.toml"
    toml.write_text('[peer-kinds]\n"http://b:8080" = "wubloader"\n')
    assert load_toml(toml)["peer_kinds"] == {"http://b:8080": "wubloader"}


async def test_a_peer_configured_as_wubloader_gets_no_pusher(cluster_factory, tmp_path):
    with legacy_node(tmp_path / "wub") as wub:
        async with cluster_factory(1, connect=False, backfill=False,
                                   peer_kinds={wub.url: "wubloader"}) as c:
            node = c.nodes[0]
            await node.set_peers([wub.url])
            assert node.peers.by_url(wub.url).kind is PeerKind.WUBLOADER
            assert node.pusher.pushers == {}
            write_segments(c.root(0), 2, hours_ago(1), 1)
            [r] = await node.backfiller.round_all([wub.url])
            assert r.ok, r.error
            assert wub.requests() and all(q.startswith("GET /files") for q in wub.requests())


async def test_a_peer_moving_between_kinds_is_probed_again(cluster_factory, tmp_path):
    """wubloader -> segsync at the next re-probe; segsync -> wubloader when /v1 vanishes."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with cluster_factory(1, connect=False, backfill=False) as c:
        node = c.nodes[0]
        await node.set_peers([url])
        with legacy_node(tmp_path / "wub", "--port", str(port)) as wub:
            first = write_segments(wub.root, 2, hours_ago(3), 1)
            [r] = await node.backfiller.round_all([url])
            assert r.ok, r.error
            assert kind_of(node, url) is PeerKind.WUBLOADER
        upgraded = await c.start_node(listen=f"127.0.0.1:{port}", backfill=False)
        second = write_segments(c.root(1), 2, hours_ago(2), 2)
        await wait_until(lambda: all(upgraded.index.has(n, Kind.SEGMENT) for n in second))
        node.kinds.reprobe_after = 0  # instead of waiting ten minutes
        [r] = await node.backfiller.round_all([url])
        assert r.ok, r.error
        assert kind_of(node, url) is PeerKind.SEGSYNC
        assert all((c.root(0) / n.path).exists() for n in first + second)
        upgraded.stop()
        await wait_until(lambda: free_to_bind(port))
        with legacy_node(tmp_path / "wub2", "--port", str(port)):
            [r] = await node.backfiller.round_all([url])  # its /v1 is gone: 404
            assert not r.ok and kind_of(node, url) is None
            backoff = node.backfiller.states[url].backoff
            await wait_until(lambda: backoff.ready(trio.current_time()))
            [r] = await node.backfiller.round_all([url])
            assert r.ok, r.error
            assert kind_of(node, url) is PeerKind.WUBLOADER


def free_to_bind(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_purge_asks_a_legacy_peer_for_its_tombstones(cluster_factory, tmp_path, capsys):
    with legacy_node(tmp_path / "wub") as wub:
        async with cluster_factory(1, connect=False, backfill=False) as c:
            node = c.nodes[0]
            s1, s2 = write_segments(c.root(0), 2, hours_ago(2), 1)
            for s in (s1, s2):
                touch_tombstone(c.root(0), s)
                (wub.root / s.hour_path).mkdir(parents=True, exist_ok=True)
                (wub.root / s.path).write_bytes((c.root(0) / s.path).read_bytes())
            touch_tombstone(wub.root, s1)  # the wubloader node never got s2's tombstone
            await wait_until(lambda: node.index.has(s2, Kind.TOMBSTONE))
            await node.set_peers([wub.url])
            [r] = await node.backfiller.round_all([wub.url])  # learns its kind
            assert r.ok, r.error
            code, out, err = await run_cli(capsys, "purge", "--root", str(c.root(0)),
                                           "--node", node.url)
            assert code == 0, err
            assert "deleted 1, kept 1" in out, out
            assert not (c.root(0) / s1.path).exists()
            assert (c.root(0) / s2.path).exists()
            assert f"tombstone missing on {wub.url}" in out
            assert wub.pushes() == []
