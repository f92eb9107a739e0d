"""Push: every new local segment and tombstone goes to every peer, right away.

One `PeerPusher` per peer, each with its own bounded queues, workers, HTTP client
and backoff, so a down, slow or hostile peer costs only its own work. Tombstones
jump the queue. A full queue drops (and counts): backfill repairs what is dropped.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from protocol.backoff import Backoff
from protocol.names import Kind, SegmentName

from .client import PeerClient, PeerError
from .reoffer import ReOffers

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
DEFERRED_OUTCOMES = ("deferred", "left_to_backfill")  # not acknowledged: no latency


@dataclass
class PushItem:
    name: SegmentName
    kind: Kind
    seen_at: float  # trio clock when the watcher reported it
    attempts: int = field(default=0)

    @property
    def label(self) -> str:
        return "tombstone" if self.kind is Kind.TOMBSTONE else "segment"


class PeerPusher:
    def __init__(self, node: "Node", url: str) -> None:
        self.node = node
        self.url = url
        cfg = node.config
        self.client = PeerClient(url, cfg.token, cfg.node_name, concurrency=cfg.push_concurrency,
                                 timeout=cfg.request_timeout)
        self.tombstones: collections.deque[PushItem] = collections.deque()
        self.segments: collections.deque[PushItem] = collections.deque()
        self.max_queue = cfg.push_queue_size
        self.backoff = Backoff(base=0.05, cap=cfg.backoff_cap)
        self._wakeup = trio.Event()
        self.cancel_scope = trio.CancelScope()
        self.last_success: float | None = None  # wall clock
        self.last_error: str | None = None
        self.dropped = 0
        self.reoffers: ReOffers[PushItem] = ReOffers(
            self.enqueue, lambda item: item.name, recent_window=cfg.recent_window,
            max_items=cfg.push_queue_size)
        node.metrics.queue_depth.labels(url).set(0)  # every peer shows up, idle ones too

    def depth(self) -> int:
        return len(self.tombstones) + len(self.segments)

    def enqueue(self, item: PushItem) -> bool:
        queue = self.tombstones if item.kind is Kind.TOMBSTONE else self.segments
        if self.depth() >= self.max_queue:
            self.dropped += 1
            self.node.metrics.push_dropped.labels(self.url).inc()
            self.node.metrics.pushes.labels(self.url, item.label, "dropped").inc()
            return False
        queue.append(item)
        self._changed()
        return True

    def _changed(self) -> None:
        self.node.metrics.queue_depth.labels(self.url).set(self.depth())
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
        with self.cancel_scope:
            try:
                async with trio.open_nursery() as nursery:
                    for _ in range(self.node.config.push_concurrency):
                        nursery.start_soon(self._worker)
                    nursery.start_soon(self.reoffers.run)
            finally:
                await self.client.aclose()

    async def _worker(self) -> None:
        while True:
            item = await self._next()
            wait = self.backoff.wait_time(trio.current_time())
            if wait > 0:
                await trio.sleep(wait)
            try:
                outcome = await self._push(item)
            except PeerError as e:
                self._failed(item, str(e), e.status)
                continue
            except OSError as e:  # our own file vanished or is unreadable
                log.warning("push %s to %s: %s", item.name.path, self.url, e)
                self.node.metrics.pushes.labels(self.url, item.label, "error").inc()
                continue
            self.backoff.success()
            self.last_success = time.time()
            self.last_error = None
            m = self.node.metrics
            m.pushes.labels(self.url, item.label, outcome).inc()
            m.last_push.labels(self.url).set(self.last_success)
            if outcome not in DEFERRED_OUTCOMES:
                m.push_latency.labels(item.label).observe(trio.current_time() - item.seen_at)

    async def _push(self, item: PushItem) -> str:
        if item.kind is Kind.TOMBSTONE:
            return await self.client.send_tombstone(item.name)
        path = self.node.store.path_of(item.name)

        def visible_size() -> int | None:  # one thread hop, not two: it is on the push path
            return path.stat().st_size if self.node.store.is_visible(item.name) else None

        size = await trio.to_thread.run_sync(visible_size)
        if size is None:
            return "skipped"  # tombstoned or removed since it was queued
        reply = await self.client.offer_deferrable(item.name, size)
        if reply.status == "later":  # the peer's own downloader is about to write it
            assert reply.retry_after is not None
            return "deferred" if self.reoffers.park(item, reply.retry_after) else "left_to_backfill"
        if reply.status != "want":
            return reply.status
        status, sent = await self.client.upload(item.name, path)
        self.node.metrics.bytes.labels("pushed").inc(sent)
        return status

    def _failed(self, item: PushItem, why: str, status: int | None) -> None:
        self.last_error = why
        item.attempts += 1
        permanent = status is not None and 400 <= status < 500 and status not in (401, 408, 429)
        if permanent or item.attempts >= MAX_ATTEMPTS:
            log.warning("giving up push of %s to %s (backfill will repair): %s",
                        item.name.path, self.url, why)
            self.node.metrics.pushes.labels(self.url, item.label, "failed").inc()
            if not permanent:
                self.backoff.failure(trio.current_time())
            return
        delay = self.backoff.failure(trio.current_time())
        log.info("push %s to %s failed (%s); retry in %.2fs", item.name.path, self.url, why, delay)
        self.node.metrics.pushes.labels(self.url, item.label, "retry").inc()
        queue = self.tombstones if item.kind is Kind.TOMBSTONE else self.segments
        queue.appendleft(item)
        self._changed()


class Pusher:
    """The set of peer pushers; follows peer-list changes without a restart."""

    def __init__(self, node: "Node") -> None:
        self.node = node
        self.peers: dict[str, PeerPusher] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.set_peers(self.node.peer_urls())
            task_status.started()
            await trio.sleep_forever()

    def set_peers(self, urls: list[str]) -> None:
        assert self._nursery is not None
        for url in list(self.peers):
            if url not in urls:
                self.peers.pop(url).cancel_scope.cancel()
                try:
                    self.node.metrics.queue_depth.remove(url)  # a gone peer has no queue
                except KeyError:
                    pass
        for url in urls:
            if url not in self.peers:
                pusher = self.peers[url] = PeerPusher(self.node, url)
                self._nursery.start_soon(pusher.run)

    def push(self, name: SegmentName, kind: Kind, seen_at: float) -> None:
        for pusher in self.peers.values():
            pusher.enqueue(PushItem(name, kind, seen_at))
