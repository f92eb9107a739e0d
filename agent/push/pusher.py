"""Push: every new local segment and tombstone goes to every peer, right away.

One `PeerPusher` per peer, each with its own bounded queues, workers, HTTP client
and backoff, so a down, slow or hostile peer costs only its own work. Tombstones
jump the queue. A full queue drops (and counts): backfill repairs what is dropped.
`Pusher` follows the `PeerSet`: a pusher per configured peer, for as long as it is.
A wubloader node is never pushed to: none for a peer configured so, and a peer of
unknown kind gets nothing until a probe says it is a segsync agent. A segment whose
tombstone is on disk is not sent: checked before the offer and again at the upload's
first byte (`DiskTombstones`), whether or not the watcher has reported it.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import trio

from protocol import messages as m
from protocol.backoff import Backoff, StartupGrace
from protocol.names import Kind, SegmentName
from protocol.peerkind import PeerKind
from protocol.scrub import RottenBytes

from ..archive.disk_tombstones import DiskTombstones
from ..archive.store import Store
from ..peers.client import ClientFactory, PeerClient, PeerError, Withdrawn
from ..peers.kinds import PeerKinds
from ..peers.peer_set import Peer, PeerSet, follow_peers
from ..telemetry.metrics import Metrics
from .reoffer import ReOffers

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
WARM_UP_RETRY = 0.25  # seconds before the first retry of a warm-up (doubling, capped)
DEFERRED_OUTCOMES = ("deferred", "left_to_backfill")  # not acknowledged: no latency

ReportRot = Callable[[SegmentName], None]


@dataclass(frozen=True)
class PushSettings:
    concurrency: int = 4  # uploads in flight per peer
    queue_size: int = 10_000  # items waiting per peer
    backoff_cap: float = 30.0
    recent_window: float = 120.0  # a deferred offer older than this is left to backfill

    @classmethod
    def from_config(cls, cfg) -> "PushSettings":
        return cls(cfg.push_concurrency, cfg.push_queue_size, cfg.backoff_cap,
                   cfg.recent_window)


@dataclass
class PushItem:
    name: SegmentName
    kind: Kind
    seen_at: float  # trio clock when the watcher reported it
    size: int | None = None  # a segment's, measured when it was announced
    attempts: int = field(default=0)

    @property
    def label(self) -> str:
        return "tombstone" if self.kind is Kind.TOMBSTONE else "segment"


@dataclass(frozen=True)
class PushState:
    """What status shows of one peer's pusher."""

    queue_depth: int = 0
    last_success: float | None = None  # wall clock
    last_error: str | None = None
    dropped: int = 0
    deferred: int = 0  # offers parked until the peer's retry-after


class PeerPusher:
    """One peer's queues and workers."""

    def __init__(self, peer: Peer, client: PeerClient, store: Store, metrics: Metrics,
                 settings: PushSettings, kinds: PeerKinds,
                 report_rot: ReportRot = lambda name: None, *,
                 disk_tombstones: DiskTombstones,
                 grace: StartupGrace | None = None) -> None:
        self.peer = peer
        self.disk_tombstones = disk_tombstones
        self.kinds = kinds  # None: the peer is a segsync agent
        self.grace = grace or StartupGrace()  # a peer not up yet is no warning at start-up
        self.report_rot = report_rot  # a local file whose bytes do not hash to its name
        self.label = peer.name  # metric label
        self.client = client
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.tombstones: collections.deque[PushItem] = collections.deque()
        self.segments: collections.deque[PushItem] = collections.deque()
        self.backoff = Backoff(base=0.05, cap=settings.backoff_cap)
        self._wakeup = trio.Event()
        self.warmed = trio.Event()  # the peer's kind known and a connection opened
        self.last_success: float | None = None  # wall clock
        self.last_error: str | None = None
        self.dropped = 0
        self.reoffers: ReOffers[PushItem] = ReOffers(
            self.enqueue, lambda item: item.name, recent_window=settings.recent_window,
            max_items=settings.queue_size)
        metrics.queue_depth.labels(self.label).set(0)  # every peer shows up, idle ones too

    def depth(self) -> int:
        return len(self.tombstones) + len(self.segments)

    def state(self) -> PushState:
        return PushState(self.depth(), self.last_success, self.last_error, self.dropped,
                         len(self.reoffers))

    def enqueue(self, item: PushItem) -> bool:
        queue = self.tombstones if item.kind is Kind.TOMBSTONE else self.segments
        if self.depth() >= self.settings.queue_size:
            self.dropped += 1
            self.metrics.push_dropped.labels(self.label).inc()
            self.metrics.pushes.labels(self.label, item.label, "dropped").inc()
            return False
        queue.append(item)
        self._changed()
        return True

    def _changed(self) -> None:
        self.metrics.queue_depth.labels(self.label).set(self.depth())
        self._wakeup.set()

    async def _next(self) -> PushItem:
        while True:
            if self.tombstones:
                item = self.tombstones.popleft()
            elif self.segments:
                item = self.segments.popleft()
            else:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            self._changed()
            return item

    async def run(self) -> None:
        async with self.client, trio.open_nursery() as nursery:
            for _ in range(self.settings.concurrency):
                nursery.start_soon(self._worker)
            nursery.start_soon(self.reoffers.run)
            nursery.start_soon(self.warm_up)

    async def warm_up(self) -> None:
        """Make the first push as fast as the next ones: learn the peer's kind and
        open a connection of this pusher's pool now, not when the first segment is
        waiting. Measured (bench/cluster_bandwidth.py): a peer not up yet when this
        agent started was probed only by the first push, 10-80 ms on that segment's
        path (more while the whole cluster does the same at once), and the first
        offer paid a connection of its own. Retried with backoff until the peer has
        answered once; then it is done (pushes keep their connections warm)."""
        backoff = Backoff(base=WARM_UP_RETRY, cap=self.settings.backoff_cap)
        while True:
            try:
                if await self._is_segsync():
                    await self.client.ping()
                self.warmed.set()
                return
            except PeerError as e:
                log.debug("warming up the push to %s: %s", self.peer, e)
            await trio.sleep(backoff.failure(trio.current_time()))

    async def _worker(self) -> None:
        while True:
            item = await self._next()
            wait = self.backoff.wait_time(trio.current_time())
            if wait > 0:
                await trio.sleep(wait)
            try:
                if not await self._is_segsync():
                    log.debug("not pushing %s to wubloader node %s", item.name.path, self.peer)
                    continue
                outcome = await self._push(item)
            except PeerError as e:
                self._failed(item, str(e), e.status)
                continue
            except RottenBytes as e:  # never sent whole; the scrub quarantines and heals it
                log.error("push %s to %s stopped: %s", item.name.path, self.peer, e)
                self.metrics.pushes.labels(self.label, item.label, "rotten").inc()
                self.report_rot(item.name)
                continue
            except OSError as e:  # our own file vanished or is unreadable
                log.warning("push %s to %s: %s", item.name.path, self.peer, e)
                self.metrics.pushes.labels(self.label, item.label, "error").inc()
                continue
            self.backoff.success()
            self.grace.answered(self.peer.url)
            self.last_success = time.time()
            self.last_error = None
            metrics = self.metrics
            metrics.pushes.labels(self.label, item.label, outcome).inc()
            metrics.last_push.labels(self.label).set(self.last_success)
            if outcome not in DEFERRED_OUTCOMES:
                latency = trio.current_time() - item.seen_at
                metrics.push_latency.labels(item.label).observe(latency)
                metrics.recent_push_latencies.add(self.last_success, latency)

    async def _is_segsync(self) -> bool:
        """Whether the peer takes pushes: its kind, probed first if unknown (a
        PeerError if it cannot be told yet: the item is retried like a failed push)."""
        return self.kinds is None or await self.kinds.kind(self.peer) is PeerKind.SEGSYNC

    async def _push(self, item: PushItem) -> str:
        if item.kind is Kind.TOMBSTONE:
            return await self.client.send_tombstone(item.name)
        name = item.name
        path = self.store.path_of(name)
        size = item.size
        if size is None:  # not measured when announced: one thread hop, not two
            def visible_size() -> int | str:
                if self.disk_tombstones.on_disk(name):
                    return "tombstoned"
                try:
                    return path.stat().st_size
                except (FileNotFoundError, NotADirectoryError):
                    return "removed"

            found = await trio.to_thread.run_sync(visible_size)
            if found == "tombstoned":
                self.disk_tombstones.record(name)
            if isinstance(found, str):
                return "skipped"  # tombstoned or removed since it was queued
            size = found
        # A segment tombstoned since it was queued may still be offered (a few
        # bytes); its bytes never go: the upload checks the disk before its first one
        reply = await self.client.offer_deferrable(item.name, size)
        if isinstance(reply, m.OfferLater):  # the peer's own downloader is about to write it
            return "deferred" if self.reoffers.park(item, reply.retry_after) else "left_to_backfill"
        if reply.status != "want":
            return reply.status
        try:
            status, sent = await self.client.upload(
                name, path, withdrawn=lambda: self.disk_tombstones.on_disk(name), size=size)
        except Withdrawn:  # tombstoned since the check above: not one byte was sent
            self.disk_tombstones.record(name)
            return "skipped"
        except FileNotFoundError:  # removed (quarantined, say) since it was queued
            return "skipped"
        self.metrics.bytes.labels("pushed").inc(sent)
        return status

    def _failed(self, item: PushItem, why: str, status: int | None) -> None:
        self.last_error = why
        item.attempts += 1
        permanent = status is not None and 400 <= status < 500 and status not in (401, 408, 429)
        if permanent or item.attempts >= MAX_ATTEMPTS:
            not_up_yet = status is None and self.grace.expected(self.peer.url,
                                                                trio.current_time())
            log.log(logging.INFO if not_up_yet else logging.WARNING,
                    "giving up push of %s to %s (backfill will repair): %s",
                    item.name.path, self.peer, why)
            self.metrics.pushes.labels(self.label, item.label, "failed").inc()
            if not permanent:
                self.backoff.failure(trio.current_time())
            return
        delay = self.backoff.failure(trio.current_time())
        log.info("push %s to %s failed (%s); retry in %.2fs", item.name.path, self.peer, why,
                 delay)
        self.metrics.pushes.labels(self.label, item.label, "retry").inc()
        queue = self.tombstones if item.kind is Kind.TOMBSTONE else self.segments
        queue.appendleft(item)
        self._changed()


class Pusher:
    """A `PeerPusher` for every peer of the set, for as long as the peer is in it."""

    def __init__(self, peers: PeerSet, clients: ClientFactory, store: Store, metrics: Metrics,
                 settings: PushSettings, kinds: PeerKinds,
                 report_rot: ReportRot = lambda name: None, *,
                 disk_tombstones: DiskTombstones,
                 grace: StartupGrace | None = None) -> None:
        self.peers = peers
        self.disk_tombstones = disk_tombstones
        self.kinds = kinds
        self.grace = grace or StartupGrace()
        self.report_rot = report_rot
        self.clients = clients
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.pushers: dict[Peer, PeerPusher] = {}

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await follow_peers(self.peers, self._run_peer, task_status=task_status)

    def pushed_to(self, peer: Peer) -> bool:
        """Whether `peer` gets a pusher: all but a peer configured as a wubloader node."""
        return peer.kind is not PeerKind.WUBLOADER

    async def _run_peer(self, peer: Peer, at_start: bool) -> None:
        if not self.pushed_to(peer):
            return
        client = self.clients.client(peer, concurrency=self.settings.concurrency)
        pusher = self.pushers[peer] = PeerPusher(peer, client, self.store, self.metrics,
                                                 self.settings, self.kinds, self.report_rot,
                                                 disk_tombstones=self.disk_tombstones,
                                                 grace=self.grace)
        try:
            await pusher.run()
        finally:
            if self.pushers.get(peer) is pusher:
                del self.pushers[peer]
                try:
                    self.metrics.queue_depth.remove(pusher.label)  # a gone peer has no queue
                except KeyError:
                    pass

    def push(self, name: SegmentName, kind: Kind, seen_at: float,
             size: int | None = None) -> None:
        for peer, pusher in list(self.pushers.items()):
            if self.kinds.known(peer) is not PeerKind.WUBLOADER:  # found one by a probe
                pusher.enqueue(PushItem(name, kind, seen_at, size))

    def state(self, peer: Peer) -> PushState:
        pusher = self.pushers.get(peer)
        return pusher.state() if pusher else PushState()
