"""Downloader-aware push, sending side: offers a peer answered "later" wait here.

Each peer pusher has one: a deferred offer is parked (bounded) and handed back to
that peer's queue once its retry-after has passed, so it never holds a worker, the
other segments or the other peers. A segment older than the recent window is left
to backfill instead (the peer's downloader had every chance; pull repairs the rest).
"""

from __future__ import annotations

import datetime as dt
from typing import Callable, Generic, TypeVar

import trio

from protocol.names import SegmentName
from protocol.recording import DeferredQueue, left_to_backfill

T = TypeVar("T")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class DueQueue(Generic[T]):
    """A `DeferredQueue` on trio's clock: items parked for a while, taken once due.
    The re-offers and the hole repairer both wait on one."""

    def __init__(self, max_items: int) -> None:
        self.queue: DeferredQueue[T] = DeferredQueue(max_items)
        self._wakeup = trio.Event()

    def __len__(self) -> int:
        return len(self.queue)

    def park(self, item: T, delay: float) -> bool:
        """Due in `delay` seconds; False when the queue is full."""
        if not self.queue.park(item, trio.current_time() + delay):
            return False
        self._wakeup.set()
        return True

    async def next_due(self) -> list[T]:
        """Wait for the next items to come due (earliest first) and take them."""
        while True:
            due = self.queue.next_due()
            self._wakeup = trio.Event()
            if due is None:
                await self._wakeup.wait()
                continue
            with trio.move_on_at(due):
                await self._wakeup.wait()  # an earlier due time may have come in
            items = self.queue.pop_due(trio.current_time())
            if items:
                return items


class ReOffers(Generic[T]):
    def __init__(
        self, requeue: Callable[[T], object], name_of: Callable[[T], SegmentName], *,
        recent_window: float, max_items: int, wall_clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.requeue = requeue
        self.name_of = name_of
        self.recent_window = recent_window
        self.wall_clock = wall_clock
        self.due: DueQueue[T] = DueQueue(max_items)

    def __len__(self) -> int:
        return len(self.due)

    def park(self, item: T, retry_after: float) -> bool:
        """Offer `item` again in `retry_after` seconds; False when it is left to
        backfill instead (too old, or too many parked)."""
        if left_to_backfill(self.name_of(item), self.wall_clock(), self.recent_window):
            return False
        return self.due.park(item, retry_after)

    async def run(self) -> None:
        while True:
            for item in await self.due.next_due():
                self.requeue(item)
