"""Downloader-aware push, receiving side: follow the local downloader, answer offers.

Fed by the watcher with every file that appears or goes (segments no peer sent us,
and the downloader's temp files); answers a peer's offer with want, have,
tombstoned or, to a sender that understands it, later. The decisions are pure
(`protocol.recording`); this is the I/O shell around them.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Callable

from prometheus_client import Counter

from protocol import messages as m
from protocol.names import Kind, SegmentName
from protocol.recording import NearDuplicates, RecordingState
from protocol.replication import offer_status

from .index import ArchiveIndex
from .metrics import Metrics
from .recent import RecentSet
from .reoffer import utc_now
from .store import Store

REMEMBERED = 10_000  # deferred offers and wanted holes remembered, to count what they became


class DownloaderTracker:
    """What the local downloader records, and the offer replies that follow from it."""

    def __init__(
        self, store: Store, index: ArchiveIndex, metrics: Metrics, *, enabled: bool,
        idle_after: float, temp_ttl: float, recent_window: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.store = store
        self.index = index
        self.enabled = enabled
        self.clock = clock
        self.wall_clock = wall_clock
        self.state = RecordingState(idle_after, temp_ttl, recent_window)
        self._deferred = RecentSet(REMEMBERED)  # bytes answered "later" (see _bytes_key)
        self._holes = RecentSet(REMEMBERED)     # paths wanted as holes of our downloader
        self.counts = {"deferred_offers": 0, "deferral_saved": 0, "holes_filled_by_push": 0}
        r = metrics.registry
        self.deferred_total = Counter(
            "segsync_push_deferred", "Offers answered 'later': our downloader was about "
            "to write the segment", registry=r)
        self.saved_total = Counter(
            "segsync_push_deferral_saved", "Deferred segments our downloader then wrote "
            "(bytes no peer had to send)", registry=r)
        self.holes_total = Counter(
            "segsync_push_holes_filled", "Segments our downloader skipped that a push "
            "then filled", registry=r)
        self.near_duplicates_total = Counter(
            "segsync_push_near_duplicates", "Offers refused as near-duplicates of a local "
            "segment (start within 1 ms, same duration, type and hash)", registry=r)

    # ---- the watcher's view ----

    def file_event(self, name: SegmentName, kind: Kind, deleted: bool, received: bool) -> None:
        """A final or temp file appeared (or went). `received`: a peer sent it to us."""
        if kind is not Kind.SEGMENT:
            return
        if name.type == "temp":
            if deleted:
                self.state.temp_gone(name)
            else:
                self.state.temp_appeared(name, self.clock())
            return
        if deleted:
            return
        path = name.path
        if received:
            if path in self._holes:
                self._holes.discard(path)
                self.holes_total.inc()
                self.counts["holes_filled_by_push"] += 1
            return
        self.state.segment_written(name, self.clock())
        if _bytes_key(name) in self._deferred:
            self._deferred.discard(_bytes_key(name))
            self.saved_total.inc()
            self.counts["deferral_saved"] += 1

    # ---- offers ----

    def offer_reply(self, name: SegmentName, accepts_later: bool) -> m.OfferReply:
        """want / have / tombstoned / later (only to a sender that `accepts_later`)."""
        status = offer_status(self.store.has_segment(name), self.store.has_tombstone(name))
        if status != "want":
            return m.OfferReply(status)
        if name in NearDuplicates(name.channel, name.quality, name.hour,
                                  self.index.names(name.channel, name.quality, name.hour)):
            self.near_duplicates_total.inc()
            return m.OfferReply("have")
        if not self.enabled or not accepts_later or not name.replicable:
            return m.OfferReply("want")
        decision = self.state.decide(name, self.clock(), self.wall_clock())
        if decision.status == "later":
            self.deferred_total.inc()
            self.counts["deferred_offers"] += 1
            self._deferred.add(_bytes_key(name))
            return m.OfferReply("later", decision.retry_after)
        if decision.reason == "hole":
            self._holes.add(name.path)
        return m.OfferReply("want")

    def status(self) -> dict:
        """Node-wide fields of /v1/status."""
        return {"defer_push": self.enabled, **self.counts}


def _bytes_key(name: SegmentName) -> str:
    """Pair and hash: our downloader's copy counts as the deferred one even when its
    start time differs by a few microseconds (a near-duplicate)."""
    return f"{name.channel}/{name.quality}/{name.hash_text}"
