"""Backfill's overlapped commits with real files: a verified segment waiting for a
commit slot when its round is cancelled (shutdown, a round deadline) leaves no temp
file behind."""

from __future__ import annotations

import os

import trio

from agent.archive.index import ArchiveIndex
from agent.archive.ingest import Ingest
from agent.archive.store import Store
from agent.peers.peer_set import Peer, PeerCapabilities
from agent.pull.downloads import Downloads, PeerFetch, _Commits
from agent.pull.round_stats import PairStats
from agent.telemetry.metrics import Metrics
from fault_helpers import audit_archive
from conftest import wait_until
from helpers import hours_ago, make_name


async def chunks_of(data: bytes):
    yield data


async def test_a_segment_cancelled_while_waiting_for_a_commit_slot_leaves_no_temp(tmp_path):
    store, index, metrics = Store(tmp_path), ArchiveIndex(), Metrics()
    downloads = Downloads(Ingest(store, index, metrics), store, index, metrics,
                          max_concurrency=2, max_segment_bytes=1 << 20)
    downloads.commit_slots = trio.Semaphore(0)  # every commit slot taken
    peer = PeerFetch(None, PeerCapabilities(), Peer.from_url("http://127.0.0.1:1"),
                     PairStats(), None)
    data = os.urandom(10_000)
    name = make_name(data, hours_ago(3))
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as commits:
            outer.start_soon(downloads._store, peer, name, len(data), chunks_of(data),
                             _Commits(commits, set()))
            # received and verified, now waiting for a slot: the round is cancelled
            await wait_until(lambda: downloads.commit_slots.statistics().tasks_waiting)
            assert len(audit_archive(tmp_path).temps) == 1
            outer.cancel_scope.cancel()
    audit = audit_archive(tmp_path)
    assert audit.temps == []
    assert not (tmp_path / name.path).exists()
