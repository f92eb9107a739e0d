"""Broken peers, each on its own: the healthy peers still get pushes and backfill, and
the agent never crashes.

Node A has two healthy peers (B, C) and one broken one. B and C have no peers, so the
only way their segments reach A is A's backfill; A's own segments reach them by push.
"""

from __future__ import annotations

import datetime as dt
import os

import httpx
import pytest
import trio

from conftest import wait_until
from fault_helpers import (
    LyingPeer,
    audit_archive,
    error_peer,
    garbage_peer,
    refusing_peer_url,
    silent_peer,
    trickle_peer,
)
from helpers import hours_ago, make_name, write_segment_file, push_state

KINDS = ["refuses", "http500", "garbage", "silent", "trickle", "liar", "slow-liar", "flood",
         "liar-batch", "slow-liar-batch", "flood-batch"]


def _segments(root, count: int, hours_back: float, tag: int) -> list:
    names = []
    for i in range(count):
        data = os.urandom(20_000 + i)
        name = make_name(data, hours_ago(hours_back) + dt.timedelta(seconds=2 * i + tag * 100))
        write_segment_file(root, name, data)
        names.append(name)
    return names


async def _start_broken(nursery: trio.Nursery, kind: str, liar: LyingPeer) -> str:
    if kind == "refuses":
        return refusing_peer_url()
    server = {"http500": error_peer, "garbage": garbage_peer, "silent": silent_peer,
              "trickle": trickle_peer}.get(kind, liar.run)
    return await nursery.start(server)


@pytest.mark.parametrize("kind", KINDS)
async def test_broken_peer_costs_only_itself(cluster_factory, kind):
    fake = [make_name(os.urandom(64), hours_ago(3) + dt.timedelta(seconds=2 * i))
            for i in range(6)]
    lie = kind.removesuffix("-batch")
    liar = LyingPeer(fake, {"slow-liar": "slow", "flood": "flood"}.get(lie, "mismatch"),
                     batch=kind.endswith("-batch"))
    async with trio.open_nursery() as hostile:
        broken = await _start_broken(hostile, kind, liar)
        async with cluster_factory(3, connect=False, backfill_interval=0.3,
                                   request_timeout=1.5, backoff_cap=1.0) as c:
            a, b, cc = c.nodes
            await a.set_peers([b.url, broken, cc.url])
            pushed = _segments(c.root(0), 8, 1, 0)
            pulled_b = _segments(c.root(1), 4, 2, 1)
            pulled_c = _segments(c.root(2), 4, 2, 2)
            await b.local_files.rescan(announce_new=False)
            await cc.local_files.rescan(announce_new=False)

            def converged() -> bool:
                return (all((c.root(i) / n.path).exists() for n in pushed for i in (1, 2))
                        and all((c.root(0) / n.path).exists() for n in pulled_b + pulled_c))

            await wait_until(converged, timeout=30)
            # a second wave, while the broken peer has been failing for a while
            more = _segments(c.root(0), 4, 0.5, 3)
            more_b = _segments(c.root(1), 2, 4, 4)
            await b.local_files.rescan(announce_new=False)
            await wait_until(lambda: all((c.root(i) / n.path).exists() for n in more
                                         for i in (1, 2))
                             and all((c.root(0) / n.path).exists() for n in more_b), timeout=30)

            for i in range(3):
                audit = audit_archive(c.root(i))
                assert audit.bad == []
                assert i == 0 or audit.temps == []
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{a.url}/healthz")).status_code == 200
            status = a.status.report()
            by_url = {p.url: p for p in status.peers}
            if lie not in ("liar", "slow-liar"):
                await wait_until(lambda: push_state(a, broken).last_error is not None, 10)
            if kind == "trickle":  # cut by the whole-exchange deadline, not a read timeout
                assert "no complete exchange" in push_state(a, broken).last_error
            if lie in ("liar", "slow-liar", "flood"):
                await wait_until(lambda: liar.downloads >= len(fake), timeout=20)
                assert not any((c.root(0) / n.path).exists() for n in fake)
            if lie == "liar":
                assert a.metrics.hash_mismatches.labels("pull")._value.get() >= len(fake)
            if lie == "flood":  # replies are read only up to their size limit
                await wait_until(lambda: liar.uploads >= 1, timeout=20)
                await trio.sleep(0.5)
                assert liar.flooded < 64 * 2**20, liar.flooded
            assert by_url[b.url].push_error is None
        # downloads still in flight from the broken peer were cancelled: nothing left over
        for i in range(3):
            assert audit_archive(c.root(i)).temps == []
        hostile.cancel_scope.cancel()
