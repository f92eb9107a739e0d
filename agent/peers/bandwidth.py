"""The node's bandwidth limits (`--max-upload-rate`, `--max-download-rate`): one
`Limiter` per direction, shared by every transfer of segment bytes with every peer
(pushes and tombstones sent, segments served by single download, batch fetch or
wubloader's `/segments`; pushes received, pulls, heals).

A transfer awaits `take(nbytes, class, peer)` before it moves a chunk; the decisions
(token bucket, live before catch-up, peers fair by bytes) are `protocol.bandwidth`'s
`Scheduler`. With no limit set, `take` only counts (no await, no queue). While a
limit holds, the one waiter the next piece goes to sleeps until the bucket holds it;
every other waiter sleeps until woken. Waiters are as many as the transfers in flight,
which the existing slots bound (upload and batch-serving slots, the download limiter,
the push workers).

`BandwidthFile` re-reads the two limits from the config file when it changes; a bad
value keeps the last good limits, logged and shown in status.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from pathlib import Path
from typing import Callable

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from protocol import messages as m
from protocol.bandwidth import (
    CLASSES,
    DEFAULT_LIVE_WINDOW,
    Request,
    Scheduler,
    TransferClass,
    classify,
    describe_rate,
    parse_rate,
)
from protocol.names import SegmentName

from .tls import file_signature

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between looks at the config file
MAX_PEER_KEY = 100  # characters of a requester's name kept as its fairness key


class Limiter:
    """One direction's limit for the whole node (see the module docstring)."""

    def __init__(self, direction: str, rate: float | None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.direction = direction
        self.clock = clock
        try:
            now = clock()
        except RuntimeError:  # built outside trio: the bucket starts full all the same
            now = 0.0
        self.scheduler = Scheduler(rate, now)
        self._events: dict[Request, trio.Event] = {}
        self._timed: Request | None = None  # the waiter last told to time the next piece

    @property
    def rate(self) -> float | None:
        """Bytes per second; None: no limit."""
        return self.scheduler.rate

    def set_rate(self, rate: float | None) -> None:
        if rate == self.rate:
            return
        log.info("%s limit: %s (was %s)", self.direction, describe_rate(rate),
                 describe_rate(self.rate))
        self._wake(self.scheduler.set_rate(rate, self.clock()))
        self._timed = None  # the head's timer was set for the old rate
        self._dispatch(self.clock())

    async def take(self, nbytes: int, cls: TransferClass, peer: str) -> float:
        """Wait until `nbytes` may be moved; returns the seconds waited (a deadline
        the transfer runs under may be moved by that much: the peer was not slow)."""
        scheduler = self.scheduler
        if scheduler.bucket is None:  # no limit: count, never wait
            scheduler.count(cls, nbytes, self.clock())
            return 0.0
        since = self.clock()
        request = scheduler.ask(peer, cls, nbytes, since)
        self._events[request] = event = trio.Event()
        try:
            self._dispatch(since)
            while not request.done:
                if event.is_set():
                    self._events[request] = event = trio.Event()
                if scheduler.head() is request:
                    at = scheduler.next_grant_at(self.clock())
                    with trio.move_on_at(at if at is not None else self.clock()):
                        await event.wait()
                else:
                    await event.wait()
                if not request.done:
                    self._dispatch(self.clock())
        except BaseException:
            scheduler.cancel(request, self.clock())
            self._dispatch(self.clock())  # the next waiter takes over the timing
            raise
        finally:
            del self._events[request]
        return self.clock() - since

    def _wake(self, requests: list[Request]) -> None:
        for request in requests:
            event = self._events.get(request)
            if event is not None:
                event.set()

    def _dispatch(self, now: float) -> None:
        """Grant what the bucket holds; wake those granted, and the new head so it
        times the next piece."""
        self._wake(self.scheduler.grant(now))
        head = self.scheduler.head()
        if head is not None and head is not self._timed:
            self._timed = head
            self._wake([head])

    def status(self) -> m.BandwidthStatus:
        now = self.clock()
        s = self.scheduler
        live, catchup = TransferClass.LIVE, TransferClass.CATCHUP
        return m.BandwidthStatus(
            direction=self.direction, limit=self.rate,
            live_rate=s.current_rate(live, now), catchup_rate=s.current_rate(catchup, now),
            live_bytes=s.counters[live].bytes, catchup_bytes=s.counters[catchup].bytes,
            live_waited=s.waited(live, now), catchup_waited=s.waited(catchup, now),
            live_waiting=s.counters[live].waiting,
            catchup_waiting=s.counters[catchup].waiting)


class Bandwidth:
    """The node's two limiters, the live window that classes transfers, and the last
    refused change of the limits (status shows it)."""

    def __init__(self, upload: float | None = None, download: float | None = None,
                 live_window: float = DEFAULT_LIVE_WINDOW,
                 clock: Callable[[], float] = trio.current_time,
                 wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)
                 ) -> None:
        self.upload = Limiter("upload", upload, clock)
        self.download = Limiter("download", download, clock)
        self.live_window = live_window
        self.wall = wall
        self.problem: str | None = None  # why the last change of the limits was refused

    @classmethod
    def from_config(cls, cfg) -> "Bandwidth":
        """The limits as configured (MB/s, 0: none; validated by the config)."""
        return cls(parse_rate(cfg.max_upload_rate, "max-upload-rate"),
                   parse_rate(cfg.max_download_rate, "max-download-rate"), cfg.live_window)

    def classify(self, name: SegmentName | None) -> TransferClass:
        """Live or catch-up: a tombstone (None) is live, a segment by its age."""
        return classify(name.start if name is not None else None, self.wall(),
                        self.live_window)

    async def send(self, nbytes: int, name: SegmentName | None, peer: str) -> float:
        """Before sending `nbytes` of `name` (None: a tombstone) to `peer`."""
        return await self.upload.take(nbytes, self.classify(name), peer)

    async def receive(self, nbytes: int, name: SegmentName | None, peer: str) -> float:
        """Before handing on `nbytes` of `name` received from `peer`."""
        return await self.download.take(nbytes, self.classify(name), peer)

    # chat batches and extras files have no segment's age: their caller gives the class
    # (a push of a new local file is live; serving and pulling files is catch-up)

    async def send_as(self, nbytes: int, cls: TransferClass, peer: str) -> float:
        return await self.upload.take(nbytes, cls, peer)

    async def receive_as(self, nbytes: int, cls: TransferClass, peer: str) -> float:
        return await self.download.take(nbytes, cls, peer)

    def status(self) -> list[m.BandwidthStatus]:
        out = [self.upload.status(), self.download.status()]
        if self.problem:
            out = [dataclasses.replace(s, problem=self.problem) for s in out]
        return out

    def describe(self):
        """Nothing to describe ahead: the families are built at scrape time."""
        return []

    def collect(self):
        """Prometheus families, read at scrape time (the node registers this object in
        its metrics registry)."""
        limit = GaugeMetricFamily(
            "segsync_bandwidth_limit_bytes_per_second",
            "Configured limit per direction (0: none)", labels=["direction"])
        rate = GaugeMetricFamily(
            "segsync_bandwidth_rate_bytes_per_second",
            "Segment bytes per second over the last seconds", labels=["direction", "class"])
        moved = CounterMetricFamily(
            "segsync_bandwidth_bytes", "Segment bytes through the limiter",
            labels=["direction", "class"])
        waited = CounterMetricFamily(
            "segsync_bandwidth_wait_seconds", "Time transfers spent waiting for the limiter",
            labels=["direction", "class"])
        for limiter in (self.upload, self.download):
            d = limiter.direction
            limit.add_metric([d], limiter.rate or 0.0)
            s, now = limiter.scheduler, limiter.clock()
            for c in CLASSES:
                rate.add_metric([d, c.value], s.current_rate(c, now))
                moved.add_metric([d, c.value], s.counters[c].bytes)
                waited.add_metric([d, c.value], s.waited(c, now))
        return [limit, rate, moved, waited]


class PeerPacing:
    """What one client of one peer takes from the node's limits (clients are made by
    `ClientFactory` with the peer's name). Without limits, nothing."""

    def __init__(self, bandwidth: Bandwidth | None, peer: str) -> None:
        self.bandwidth = bandwidth
        self.peer = peer

    async def send(self, nbytes: int, name: SegmentName | None) -> float:
        if self.bandwidth is None:
            return 0.0
        return await self.bandwidth.send(nbytes, name, self.peer)

    async def receive(self, nbytes: int, name: SegmentName | None) -> float:
        if self.bandwidth is None:
            return 0.0
        return await self.bandwidth.receive(nbytes, name, self.peer)

    def download_limited(self) -> bool:
        """A download limit is set now (safe to ask from a worker thread): without one,
        `receive` only counts, and may count many reads at once."""
        return self.bandwidth is not None and self.bandwidth.download.rate is not None

    async def send_as(self, nbytes: int, cls: TransferClass) -> float:
        if self.bandwidth is None:
            return 0.0
        return await self.bandwidth.send_as(nbytes, cls, self.peer)

    async def receive_as(self, nbytes: int, cls: TransferClass) -> float:
        if self.bandwidth is None:
            return 0.0
        return await self.bandwidth.receive_as(nbytes, cls, self.peer)


def requester_key(node_name: bytes | None, client: tuple | None) -> str:
    """Who asks the server for bytes, as a fairness key: a segsync node's name, else
    its address (a wubloader node)."""
    if node_name:
        return "node:" + node_name.decode("latin-1")[:MAX_PEER_KEY]
    if client:
        return "addr:" + str(client[0])[:MAX_PEER_KEY]
    return "unknown"


class BandwidthFile:
    """The limits as the config file says, re-read whenever it changes (size, time,
    inode). `read` returns `{"upload": bytes/s or None, "download": ...}` or raises
    a ValueError saying why the file cannot be used: the limits then stay as they were.
    A limit given on the command line (`fixed`) stays as given."""

    def __init__(self, path: Path, bandwidth: Bandwidth,
                 read: Callable[[], dict[str, float | None]],
                 fixed: frozenset[str] = frozenset()) -> None:
        self.path = path
        self.bandwidth = bandwidth
        self.read = read
        self.fixed = fixed

    def _read(self) -> dict[str, float | None] | ValueError:
        try:
            return self.read()
        except ValueError as e:
            return e

    def apply(self, limits: dict[str, float | None] | ValueError) -> bool:
        """Put what `_read` found into the limiters; False if the file was refused."""
        if isinstance(limits, ValueError):
            self.bandwidth.problem = f"{time.strftime('%H:%M:%S')}: {limits}; kept the last limits"
            log.error("config %s: %s; keeping the bandwidth limits as they were",
                      self.path, limits)
            return False
        self.bandwidth.problem = None
        for limiter in (self.bandwidth.upload, self.bandwidth.download):
            if limiter.direction in self.fixed:
                continue
            limiter.set_rate(limits[limiter.direction])
        return True

    async def watch(self) -> None:
        """Poll the file; the first look reads it too (it may have changed between the
        start-up's read and this task's start: what it says now is what counts)."""
        last: tuple | None | bool = False  # never equal to a signature
        while True:
            sig = await trio.to_thread.run_sync(file_signature, self.path)
            if sig != last:
                last = sig
                self.apply(await trio.to_thread.run_sync(self._read))
            await trio.sleep(POLL_INTERVAL)
