"""A bounded ring of recent push latencies, for the dashboard's sparkline."""

from __future__ import annotations

import collections


class LatencyRing:
    """The last `maxlen` (unix time, seconds) pairs; older ones fall off."""

    def __init__(self, maxlen: int = 300) -> None:
        self._items: collections.deque[tuple[float, float]] = collections.deque(maxlen=maxlen)

    def add(self, at: float, seconds: float) -> None:
        self._items.append((at, seconds))

    def snapshot(self) -> list[tuple[float, float]]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)
