"""One direction's limit shared by the node's transfers: live first, peers fair."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from .bucket import TokenBucket
from .classes import CLASSES, TransferClass

RATE_WINDOW = 3.0  # seconds over which "current rate" is averaged


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
