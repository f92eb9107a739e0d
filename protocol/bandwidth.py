"""Bandwidth limits, sans-I/O: the rate settings, which class a transfer is in, and
the scheduler that shares one direction's limit (upload or download) between them.

A node has at most one limit per direction, for every peer and every kind of transfer.
Under a limit, live traffic (tombstones, segments that started within the live window:
pushes, hole repairs) goes before catch-up traffic (backfill of older hours, serving
them): catch-up gets only what live traffic leaves. Within a class, peers share fairly
(by bytes granted, so a peer with many transfers in flight does not crowd out one with
few). The limit is a token bucket with a small burst (`BURST_SECONDS` of the rate):
over any span of time a limited direction moves at most `rate * span + burst` bytes.

Nothing here reads a clock: every call takes `now` (seconds, any monotonic origin).
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import math
from dataclasses import dataclass, field
from typing import Any

MB = 1_000_000  # the limits are given in MB/s: 10^6 bytes per second
MIN_LIMIT_MB = 0.05  # below this a transfer could not meet peers' slowest-rate deadline
MAX_LIMIT_MB = 100_000.0  # 100 GB/s: anything above is a typo
BURST_SECONDS = 0.05  # the bucket holds 50 ms worth of the rate...
MIN_BURST = 64 * 1024  # ...and never less than one 64 KiB piece
DEFAULT_LIVE_WINDOW = 600.0  # seconds: a segment younger than this is live traffic
RATE_WINDOW = 3.0  # seconds over which "current rate" is averaged
# float rounding must never leave a request a hair short for ever: `take` accepts a
# shortfall of twice this share of the burst (carried as debt), `ready_at` aims at once
SLACK = 1e-7


class TransferClass(enum.Enum):
    LIVE = "live"
    CATCHUP = "catchup"


CLASSES = (TransferClass.LIVE, TransferClass.CATCHUP)  # in order of priority
DIRECTIONS = ("upload", "download")


class RateError(ValueError):
    """A rate setting that cannot be used, saying why."""


# ---- settings ----

def parse_rate(value: Any, what: str) -> float | None:
    """A limit in MB/s (a TOML or flag value) as bytes per second; 0 or None: no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RateError(f"{what} must be a number of MB/s (0: no limit)")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise RateError(f"{what} must be >= 0 MB/s (0: no limit)")
    if value == 0:
        return None
    if value < MIN_LIMIT_MB:
        raise RateError(f"{what} must be at least {MIN_LIMIT_MB} MB/s (or 0: no limit): "
                        "slower transfers would run past peers' deadlines")
    if value > MAX_LIMIT_MB:
        raise RateError(f"{what} must be at most {MAX_LIMIT_MB:.0f} MB/s")
    return value * MB


def parse_live_window(value: Any, what: str = "live-window") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or math.isnan(value) or not 0 <= value <= 7 * 86400:
        raise RateError(f"{what} must be a number of seconds from 0 to 604800")
    return float(value)


def describe_rate(rate: float | None) -> str:
    """'20 MB/s', 'no limit'."""
    return "no limit" if rate is None else f"{rate / MB:g} MB/s"


def burst_for(rate: float) -> float:
    """The bucket's size at `rate` bytes/s: small, so a limit holds over short spans."""
    return max(float(MIN_BURST), rate * BURST_SECONDS)


# ---- classification ----

def classify(start: dt.datetime | None, now: dt.datetime, live_window: float
             ) -> TransferClass:
    """Which class a transfer is in. `start`: the segment's start time, None for a
    tombstone (always live: it must hide its segment everywhere at once). A segment
    that started within `live_window` seconds of `now` (or after it: clocks differ) is
    live, whoever moves it (a push, a hole repair, a peer fetching it from us); an
    older one is catch-up."""
    if start is None:
        return TransferClass.LIVE
    age = (now - start).total_seconds()
    return TransferClass.LIVE if age <= live_window else TransferClass.CATCHUP


# ---- the token bucket ----

class TokenBucket:
    """Bytes that may be sent now: filled at `rate` bytes/s up to `burst`. Starts full."""

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst_for(rate) if burst is None else burst
        self.tokens = self.burst
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, nbytes: float, now: float) -> bool:
        """Take `nbytes` (at most `burst`) if the bucket holds them; False: wait."""
        self.refill(now)
        if self.tokens >= nbytes - 2 * SLACK * self.burst:
            self.tokens -= nbytes
            return True
        return False

    def ready_at(self, nbytes: float, now: float) -> float:
        """When the bucket will hold `nbytes` (at most `burst`): `now` if it does."""
        self.refill(now)
        missing = nbytes - SLACK * self.burst - self.tokens
        return now if missing <= 0 else now + missing / self.rate

    def set_rate(self, rate: float, now: float) -> None:
        """A new rate from now on; what the bucket holds shrinks to the new burst."""
        self.refill(now)
        self.rate = rate
        self.burst = burst_for(rate)
        self.tokens = min(self.tokens, self.burst)


# ---- the scheduler ----

@dataclass(eq=False)
class Request:
    """A transfer's ask for `nbytes` (taken from the bucket a piece at a time)."""

    peer: str
    cls: TransferClass
    nbytes: int
    since: float  # when it was asked: the wait is counted from here
    left: int = field(init=False)
    done: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.left = self.nbytes


@dataclass
class ClassCounters:
    """What one class moved and waited, since the start."""

    bytes: int = 0
    waited: float = 0.0  # seconds requests spent waiting for the limiter
    waiting: int = 0  # requests waiting now


class RateMeter:
    """Bytes per second over the last `window` seconds, in a few fixed bins (O(1))."""

    BINS = 6

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.width = window / self.BINS
        self.bins = [0] * self.BINS
        self.slot = 0  # index of the current bin: int(now / width)

    def _advance(self, now: float) -> None:
        slot = int(now / self.width)
        if slot != self.slot:
            for s in range(max(self.slot + 1, slot - self.BINS + 1), slot + 1):
                self.bins[s % self.BINS] = 0
            self.slot = slot

    def add(self, nbytes: int, now: float) -> None:
        self._advance(now)
        self.bins[self.slot % self.BINS] += nbytes

    def rate(self, now: float) -> float:
        """Bytes per second over the last full bins (the current, partial one left out)."""
        self._advance(now)
        done = sum(self.bins) - self.bins[self.slot % self.BINS]
        return done / (self.width * (self.BINS - 1))


class Scheduler:
    """One direction's limit shared by every transfer of the node.

    A transfer `ask`s for bytes before it moves them; `grant(now)` hands out what the
    bucket holds, a piece (at most the burst) at a time: always to a live request
    before any catch-up one, and within a class to the peer that got the fewest bytes
    so far (among the peers waiting; a peer that starts waiting begins level with the
    least served one, so idleness earns no credit). A catch-up request waits while any
    live one does: catch-up takes what live leaves. With no limit (`rate` None) every
    ask is granted at once and only counted.
    """

    def __init__(self, rate: float | None, now: float) -> None:
        self.bucket = TokenBucket(rate, now) if rate is not None else None
        # class -> peer -> that peer's waiting requests, oldest first
        self.queues: dict[TransferClass, dict[str, collections.deque[Request]]] = {
            c: {} for c in CLASSES}
        # class -> peer -> bytes granted while waiting (only peers waiting now)
        self.served: dict[TransferClass, dict[str, int]] = {c: {} for c in CLASSES}
        self.counters = {c: ClassCounters() for c in CLASSES}
        self.meters = {c: RateMeter() for c in CLASSES}

    @property
    def rate(self) -> float | None:
        return self.bucket.rate if self.bucket is not None else None

    def set_rate(self, rate: float | None, now: float) -> list[Request]:
        """A new limit (None: none). Returns the requests it lets through at once."""
        if rate is None:
            self.bucket = None
        elif self.bucket is None:
            self.bucket = TokenBucket(rate, now)
        else:
            self.bucket.set_rate(rate, now)
        return self.grant(now)

    def count(self, cls: TransferClass, nbytes: int, now: float) -> None:
        """Bytes moved without waiting (no limit set)."""
        self.counters[cls].bytes += nbytes
        self.meters[cls].add(nbytes, now)

    def ask(self, peer: str, cls: TransferClass, nbytes: int, now: float) -> Request:
        """Queue a request for `nbytes` (> 0); `grant` says when it may go."""
        request = Request(peer, cls, nbytes, now)
        queues, served = self.queues[cls], self.served[cls]
        if peer not in queues:
            queues[peer] = collections.deque()
            served[peer] = min(served.values(), default=0)
        queues[peer].append(request)
        self.counters[cls].waiting += 1
        return request

    def cancel(self, request: Request, now: float) -> None:
        """A request given up (its transfer was cancelled); what it took is spent."""
        if request.done:
            return
        request.done = True
        self._remove(request, now)

    def _remove(self, request: Request, now: float) -> None:
        queue = self.queues[request.cls][request.peer]
        queue.remove(request)
        if not queue:
            del self.queues[request.cls][request.peer]
            del self.served[request.cls][request.peer]
        counters = self.counters[request.cls]
        counters.waiting -= 1
        counters.waited += max(0.0, now - request.since)

    def head(self) -> Request | None:
        """The request the next piece goes to."""
        for cls in CLASSES:
            queues = self.queues[cls]
            if queues:
                served = self.served[cls]
                peer = min(queues, key=served.__getitem__)  # ties: the first to wait
                return queues[peer][0]
        return None

    def _piece(self, request: Request) -> int:
        assert self.bucket is not None
        return min(request.left, int(self.bucket.burst))

    def grant(self, now: float) -> list[Request]:
        """Hand out what the bucket holds; the requests now wholly granted."""
        granted = []
        while (request := self.head()) is not None:
            if self.bucket is None:
                piece = request.left
            else:
                piece = self._piece(request)
                if not self.bucket.take(piece, now):
                    break
            request.left -= piece
            self.served[request.cls][request.peer] += piece
            self.counters[request.cls].bytes += piece
            self.meters[request.cls].add(piece, now)
            if request.left == 0:
                request.done = True
                self._remove(request, now)
                granted.append(request)
        return granted

    def next_grant_at(self, now: float) -> float | None:
        """When `grant` can next give something (None: nobody waits)."""
        request = self.head()
        if request is None:
            return None
        if self.bucket is None:
            return now
        return self.bucket.ready_at(self._piece(request), now)

    def waited(self, cls: TransferClass, now: float) -> float:
        """Seconds spent waiting by the class's requests, those waiting now included."""
        counters = self.counters[cls]
        ongoing = sum(now - r.since for q in self.queues[cls].values() for r in q)
        return counters.waited + max(0.0, ongoing)

    def current_rate(self, cls: TransferClass, now: float) -> float:
        return self.meters[cls].rate(now)
