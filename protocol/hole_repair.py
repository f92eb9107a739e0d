"""Hole repair, the pure part: offers this node answered "later" are watched, and once
the local downloader has passed one without writing it (a hole, see
`protocol.recording.hole_at`), it is fetched at once from a node that offered it,
instead of waiting for that node's re-offer timer.

`HoleWatch` remembers the deferred offers (bounded, oldest forgotten first) with the
nodes that offered them, and says which are due for repair and when. No I/O, no
clock: callers pass `now`.
"""

from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass, field

from .names import SegmentName
from .recording import RecordingState, left_to_backfill

MAX_WATCHED = 4096  # deferred offers watched for holes, per node
MAX_SENDERS = 8     # nodes remembered per watched segment (who offered it)


@dataclass
class Watched:
    """A segment offered to us and answered "later", and the nodes that offered it,
    most recent last."""

    name: SegmentName
    senders: list[str] = field(default_factory=list)
    scheduled: float | None = None  # `now` of the repair already planned, if any


class HoleWatch:
    def __init__(self, max_items: int = MAX_WATCHED) -> None:
        self.max_items = max_items
        self._items: collections.OrderedDict[str, Watched] = collections.OrderedDict()
        # (channel, quality) -> paths watched of that pair
        self._by_pair: dict[tuple[str, str], set[str]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, path: str) -> bool:
        return path in self._items

    def get(self, path: str) -> Watched | None:
        return self._items.get(path)

    def deferred(self, name: SegmentName, sender: str | None) -> None:
        """`sender` (a node name; None if it did not say) offered `name` and was told
        later."""
        item = self._items.get(name.path)
        if item is None:
            item = self._items[name.path] = Watched(name)
            self._by_pair.setdefault((name.channel, name.quality), set()).add(name.path)
            while len(self._items) > self.max_items:
                self.forget(next(iter(self._items)))
        self._items.move_to_end(name.path)
        if sender:
            if sender in item.senders:
                item.senders.remove(sender)
            item.senders.append(sender)
            del item.senders[:-MAX_SENDERS]

    def forget(self, path: str) -> None:
        """Settled: written here (by the downloader or a peer), or given up."""
        item = self._items.pop(path, None)
        if item is None:
            return
        key = (item.name.channel, item.name.quality)
        paths = self._by_pair.get(key)
        if paths is not None:
            paths.discard(path)
            if not paths:
                del self._by_pair[key]

    def paths_of(self, channel: str, quality: str) -> list[str]:
        return list(self._by_pair.get((channel, quality), ()))

    def plan(self, state: RecordingState, channel: str, quality: str, now: float,
             wall_now: dt.datetime, recent_window: float) -> list[tuple[Watched, float]]:
        """After the downloader wrote a segment of this pair: the watched segments that
        are holes now or will be (each with the `now` it becomes one) and have no
        repair planned for that time yet. Those older than the recent window are
        forgotten (left to backfill)."""
        out = []
        for path in self.paths_of(channel, quality):
            item = self._items[path]
            if left_to_backfill(item.name, wall_now, recent_window):
                self.forget(path)
                continue
            at = state.hole_at(item.name, now)
            if at is None or (item.scheduled is not None and item.scheduled <= at):
                continue
            item.scheduled = at
            out.append((item, at))
        return out


def repair_order(senders: list[str], peers: list[str]) -> list[str]:
    """Whom to ask for a hole, in turn: the nodes that offered it (latest first) among
    our peers, then every other peer (a node may be known to us under another name)."""
    offered = [s for s in reversed(senders) if s in peers]
    return offered + [p for p in peers if p not in offered]
