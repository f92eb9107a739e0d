"""Which hours keep their file names in memory: those in use, not the whole archive.

The current and the previous hour (the downloader writes there; pushes and offers
look there) are always hot. Besides them, a bounded LRU of the hours most recently
written or read. Every other hour is cold: the index keeps its digest and counts and
loads its names from the persistent index when something asks for them. An hour
with changes not yet saved is never evicted (it would lose them); the caller says
which ones those are.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from typing import Callable, Hashable, Iterable

from ..names import format_hour

DEFAULT_MAX_HOT_HOURS = 48  # beyond the pinned ones; ~1800 names an hour each


def pinned_hours(now: dt.datetime) -> frozenset[str]:
    """The current and the previous hour, always hot."""
    now = now.astimezone(dt.timezone.utc)
    return frozenset({format_hour(now), format_hour(now - dt.timedelta(hours=1))})


class HotHours:
    """An LRU of keys whose last element is the hour (e.g. (channel, quality, hour)),
    bounded to `max_hours` besides the pinned ones."""

    def __init__(self, max_hours: int = DEFAULT_MAX_HOT_HOURS) -> None:
        if max_hours < 0:
            raise ValueError("max_hours must be >= 0")
        self.max_hours = max_hours
        self._lru: OrderedDict[Hashable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._lru

    def touch(self, key: Hashable) -> None:
        """The hour was written or read: it becomes the most recently used."""
        self._lru[key] = None
        self._lru.move_to_end(key)

    def forget(self, key: Hashable) -> None:
        self._lru.pop(key, None)

    def evictions(self, now: dt.datetime, unsaved: Callable[[Hashable], bool] = lambda k: False
                  ) -> list[Hashable]:
        """Keys to make cold now, least recently used first: all beyond the bound that
        are neither pinned (current or previous hour) nor unsaved. They leave the LRU."""
        pinned = pinned_hours(now)
        loose = [k for k in self._lru if k[-1] not in pinned]  # type: ignore[index]
        excess = len(loose) - self.max_hours
        out = []
        for key in loose:
            if excess <= 0:
                break
            if unsaved(key):
                continue
            out.append(key)
            excess -= 1
        for key in out:
            del self._lru[key]
        return out

    def keys(self) -> Iterable[Hashable]:
        return list(self._lru)
