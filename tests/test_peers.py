"""Peer values, the peer set's sources, and following the set (one task per peer)."""

from __future__ import annotations

import logging

import pytest
import trio

from agent.peers.peer_set import Peer, PeerSet, follow_peers, merge_sources, normalize_peer_url
from conftest import wait_until


def test_peer_from_url_is_named_by_host_and_port_unless_named():
    p = Peer.from_url("http://127.0.0.1:8201/")
    assert p.url == "http://127.0.0.1:8201" and p.name == "127.0.0.1:8201"
    assert str(p) == "http://127.0.0.1:8201"
    q = Peer.from_url("https://b.example:443", "b")
    assert q.name == "b" and str(q) == "b (https://b.example:443)"


@pytest.mark.parametrize("bad", ["ftp://a", "http://", "http://a/?x=1", "http://a#f", "a:80",
                                 "http://a:99999999"])
def test_bad_peer_urls_are_refused_with_the_url_named(bad):
    with pytest.raises(ValueError, match="peer URL"):
        normalize_peer_url(bad)


def test_sources_merge_in_order_and_the_first_entry_of_a_url_wins():
    a, b = Peer.from_url("http://a:1", "a"), Peer.from_url("http://b:1", "b")
    b_again = Peer.from_url("http://b:1", "other-name")
    assert merge_sources([[a, b], [b_again, a]]).peers == [a, b]
    assert merge_sources([[], [b_again]]).peers == [b_again]


def test_merge_names_a_peer_by_the_first_source_that_names_it():
    flags = [Peer.from_url("http://a:1"), Peer.from_url("http://b:2")]
    file = [Peer.from_url("http://b:2", "bee"), Peer.from_url("http://c:3", "cee")]
    database = [Peer.from_url("http://c:3", "sea"), Peer.from_url("http://d:4", "dee")]
    merged = merge_sources([flags, file, database], this_node="me")
    assert [(p.name, p.url) for p in merged.peers] == [
        ("a:1", "http://a:1"), ("bee", "http://b:2"), ("cee", "http://c:3"),
        ("dee", "http://d:4")]
    assert merged.this_node == [] and merged.conflicts == []


def test_merge_leaves_this_node_out_by_name_from_any_source():
    flags = [Peer.from_url("http://me:1")]
    file = [Peer.from_url("http://me:1", "me"), Peer.from_url("http://b:2", "b")]
    database = [Peer.from_url("http://me:1", "me"), Peer.from_url("http://c:3", "c")]
    merged = merge_sources([flags, file, database], this_node="me")
    assert [p.url for p in merged.peers] == ["http://b:2", "http://c:3"]
    assert merged.this_node == [Peer.from_url("http://me:1", "me")]
    # a bare URL is never this node, even when its host:port happens to be the name
    bare = merge_sources([[Peer.from_url("http://me:1")]], this_node="me:1")
    assert [p.url for p in bare.peers] == ["http://me:1"] and bare.this_node == []


def test_merge_a_name_on_two_urls_stays_with_the_first():
    file = [Peer.from_url("http://b-old:2", "b")]
    database = [Peer.from_url("http://b-new:2", "b")]
    merged = merge_sources([[], file, database], this_node="me")
    assert [(p.name, p.url) for p in merged.peers] == [
        ("b", "http://b-old:2"), ("b-new:2", "http://b-new:2")]
    assert merged.conflicts == [
        "name 'b' names both http://b-old:2 and http://b-new:2; http://b-new:2 is named b-new:2"]


def test_peer_set_leaves_this_node_out_and_logs_it_once(caplog):
    caplog.set_level(logging.INFO)
    me, b = Peer.from_url("http://me:1", "me"), Peer.from_url("http://b:2", "b")
    peers = PeerSet(this_node="me")
    assert peers.set_source("file", [me, b])
    assert peers.peers == [b]
    assert not peers.set_source("file", [me, b])
    assert not peers.set_source("database", [me])
    assert [r.getMessage() for r in caplog.records].count(
        "peer me (http://me:1) is this node (--node-name): not a peer") == 1


async def test_a_source_change_wakes_waiters_only_when_the_set_changes():
    a, b = Peer.from_url("http://a:1"), Peer.from_url("http://b:1")
    peers = PeerSet([a])
    version = peers.version
    assert not peers.set_source("file", [a])  # already there: no change
    assert peers.version == version
    woke = trio.Event()

    async def waiter():
        await peers.wait_changed(version)
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        assert peers.set_source("file", [b])
        await woke.wait()
    assert peers.peers == [a, b] and peers.by_url("http://b:1") == b


async def test_capabilities_are_kept_while_configured_and_forgotten_after():
    a = Peer.from_url("http://a:1")
    peers = PeerSet([a])
    peers.capabilities(a).batch_fetch = False
    assert peers.capabilities(a).batch_fetch is False
    peers.set_source("static", [])
    peers.set_source("static", [a])
    assert peers.capabilities(a).batch_fetch is None


async def test_follow_peers_runs_one_task_per_peer_while_it_is_in_the_set():
    a, b = Peer.from_url("http://a:1", "a"), Peer.from_url("http://b:1", "b")
    peers = PeerSet([a])
    running: dict[str, bool] = {}
    started: list[tuple[str, bool]] = []

    async def run_peer(peer: Peer, at_start: bool) -> None:
        started.append((peer.name, at_start))
        running[peer.name] = True
        try:
            await trio.sleep_forever()
        finally:
            running[peer.name] = False

    async with trio.open_nursery() as nursery:
        await nursery.start(follow_peers, peers, run_peer)
        await wait_until(lambda: running.get("a"))
        peers.set_source("file", [b])
        await wait_until(lambda: running.get("b"))
        peers.set_source("static", [])  # a leaves: its task is cancelled, b's goes on
        await wait_until(lambda: running["a"] is False)
        assert running["b"] is True
        renamed = Peer.from_url("http://b:1", "b2")  # a changed peer is restarted
        peers.set_source("file", [renamed])
        await wait_until(lambda: running["b"] is False and running.get("b2"))
        nursery.cancel_scope.cancel()
    assert started == [("a", True), ("b", False), ("b2", False)]
