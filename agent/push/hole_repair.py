"""Hole repair: a segment this node answered "later" (its downloader was about to write
it) that the downloader then passed without writing is fetched at once from a node
that offered it, instead of waiting for that node's re-offer timer.

`DownloaderTracker` hands each such hole over with the time it becomes one
(`protocol.recording`: at once for a downloader that writes in order, after its
reorder lag for one that falls behind; or, when nothing later passes it, once it is
overdue by the clock). At that time the repairer asks the tracker
again (a temp file may have appeared meanwhile), then fetches the segment
(`GET /v1/segments/...`) from the nodes that offered it, then from the other peers,
through `Ingest` (verified, atomic) as a push. Bounded: the parked holes (the
tracker's watch), REPAIRS_AT_ONCE fetches at a time.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from protocol.names import SegmentName
from protocol.peerkind import PeerKind
from protocol.recording import Watched, repair_order

from ..archive.ingest import Ingest
from ..archive.store import WriteRejected
from ..peers.client import ClientFactory, PeerError
from ..peers.kinds import PeerKinds
from ..peers.peer_set import Peer, PeerSet
from ..telemetry.metrics import Metrics
from .reoffer import DueQueue

log = logging.getLogger(__name__)

REPAIRS_AT_ONCE = 4
MAX_PARKED = 4096

# what the tracker says of a hole now: "repair", "again" (not a hole yet: the tracker
# planned it again), "wait" (not a hole yet: planned again when the downloader next
# writes), or "drop" (settled, or no longer push's business)
Verdict = Callable[[SegmentName], Awaitable[str]]


class HoleRepairer:
    def __init__(self, peers: PeerSet, clients: ClientFactory, kinds: PeerKinds,
                 ingest: Ingest, metrics: Metrics, max_segment_bytes: int) -> None:
        self.peers = peers
        self.clients = clients
        self.kinds = kinds
        self.ingest = ingest
        self.metrics = metrics
        self.max_segment_bytes = max_segment_bytes
        self.verdict: Verdict = _always  # the tracker sets its own
        self.due: DueQueue[Watched] = DueQueue(MAX_PARKED)
        self.in_flight: set[str] = set()  # paths being fetched now
        self._slots = trio.Semaphore(REPAIRS_AT_ONCE)
        self.repaired = 0

    def schedule(self, item: Watched, delay: float) -> None:
        """Repair `item` in `delay` seconds (0 or less: now). Outside trio (a test of
        the tracker alone) there is nothing to schedule on."""
        try:
            self.due.park(item, max(0.0, delay))
        except RuntimeError:  # no trio clock to park on
            return

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                for item in await self.due.next_due():
                    if item.name.path in self.in_flight:
                        continue
                    await self._slots.acquire()
                    self.in_flight.add(item.name.path)
                    nursery.start_soon(self._repair, item)

    async def _repair(self, item: Watched) -> None:
        name = item.name
        try:
            verdict = await self.verdict(name)
            if verdict != "repair":
                if verdict != "again":
                    item.scheduled = None  # the next write of the pair plans it again
                return
            if await self.ingest.offer_status(name) != "want":
                return
            for peer in self._candidates(item):
                if await self._fetch_from(peer, name):
                    self.repaired += 1
                    self.metrics.push_holes_repaired.inc()
                    return
            log.info("hole %s: no peer had it (its senders re-offer it; backfill)", name.path)
        finally:
            self.in_flight.discard(name.path)
            self._slots.release()

    def _candidates(self, item: Watched) -> list[Peer]:
        peers = [p for p in self.peers if self.kinds.known(p) is not PeerKind.WUBLOADER]
        by_name = {p.name: p for p in peers}
        return [by_name[n] for n in repair_order(item.senders, list(by_name))]

    async def _fetch_from(self, peer: Peer, name: SegmentName) -> bool:
        """True once the segment is here (stored, or it arrived meanwhile)."""
        try:
            async with self.clients.client(peer, concurrency=1) as client:
                async with client.download(name, self.max_segment_bytes) as (size, chunks):
                    status = await self.ingest.accept_segment(name, size, chunks,
                                                              source="push")
        except PeerError as e:
            if e.status != 404:
                log.info("hole %s from %s: %s", name.path, peer, e)
            return False
        except (WriteRejected, OSError) as e:
            log.warning("hole %s from %s refused: %s", name.path, peer, e)
            return False
        log.info("hole %s repaired from %s (%s)", name.path, peer, status)
        return True


async def _always(name: SegmentName) -> str:
    return "repair"
