"""Downloader-aware push, receiving side: follow the local downloader, answer offers.

`LocalFiles` tells it of every file that appears or goes (segments and the
downloader's temp files); `App` asks it how to answer an offer: want, have,
tombstoned or, to a sender that understands it, `OfferLater`. The decisions are
pure (`protocol.recording`); this is the I/O shell around them.

Offers answered "later" are watched (`protocol.recording.HoleWatch`): the moment one
of them becomes a hole (the downloader wrote a later segment and so passed it, or the
clock is past the time the downloader, as late as it lately was, would have written
it), the `HoleRepairer` (agent/push/hole_repair.py) fetches it from a node that
offered it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Callable

import trio

from protocol import messages as m
from protocol.names import Kind, SegmentName
from protocol.replication import offer_status
from protocol.recording import (
    DECLARED_GRACE,
    MIN_RETRY_AFTER,
    TEMP_TTL,
    HoleWatch,
    NearDuplicates,
    RecordingState,
    Watched,
)

from ..archive.index import ArchiveIndex
from ..archive.ingest import Ingest
from ..archive.recent import RecentSet
from ..telemetry.metrics import Metrics
from .hole_repair import HoleRepairer
from .reoffer import utc_now

log = logging.getLogger(__name__)

REMEMBERED = 10_000  # deferred offers and wanted holes remembered, to count what they became


@dataclass(frozen=True)
class DeferralSettings:
    enabled: bool = True         # config `defer-push`
    idle_after: float = 10.0     # config `recording-idle`
    recent_window: float = 120.0
    temp_ttl: float = TEMP_TTL
    # config `records`: the pairs our downloader records, deferred from the start
    declared: frozenset[tuple[str, str]] = frozenset()
    declared_grace: float = DECLARED_GRACE  # config `recording-grace`

    @classmethod
    def from_config(cls, cfg) -> "DeferralSettings":
        return cls(cfg.defer_push, cfg.recording_idle, cfg.recent_window,
                   declared=cfg.records, declared_grace=cfg.recording_grace)


@dataclass(frozen=True)
class DeferralCounts:
    """What status shows of downloader-aware push on this node (named as the fields
    of `messages.StatusReply`)."""

    defer_push: bool
    deferred_offers: int
    deferral_saved: int
    holes_filled_by_push: int


class DownloaderTracker:
    """What the local downloader records, and the offer replies that follow from it."""

    def __init__(
        self, ingest: Ingest, index: ArchiveIndex, metrics: Metrics,
        settings: DeferralSettings, clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.ingest = ingest
        self.index = index
        self.metrics = metrics
        self.enabled = settings.enabled
        self.clock = clock
        self.wall_clock = wall_clock
        # a declared pair is deferred from now (the agent's start) for its grace
        self.state = RecordingState(settings.idle_after, settings.temp_ttl,
                                    settings.recent_window, settings.declared,
                                    settings.declared_grace, started=clock())
        self._deferred = RecentSet(REMEMBERED)  # bytes answered "later" (see _bytes_key)
        self._holes = RecentSet(REMEMBERED)     # paths wanted as holes of our downloader
        self._written = RecentSet(REMEMBERED)   # paths our downloader wrote, lately
        self.deferred_offers = 0
        self.deferral_saved = 0
        self.holes_filled_by_push = 0
        self.recent_window = settings.recent_window
        self.watch = HoleWatch()  # offers answered later: holes to repair at once
        self.repairer: HoleRepairer | None = None

    def repair_holes_with(self, repairer: HoleRepairer) -> None:
        """Hand the holes of deferred offers to `repairer` (the node runs it)."""
        self.repairer = repairer
        repairer.verdict = self.hole_verdict

    async def hole_verdict(self, name: SegmentName) -> str:
        """For the repairer, when a planned repair comes due: "repair" (a hole of our
        downloader), "again" (not yet: the downloader's lag or lateness grew; planned
        again for the later time), "wait" (a download of it began: planned again
        when the downloader next writes or drops a file of the pair) or "drop" (no
        longer ours to repair: our downloader wrote it under a near-duplicate name,
        the pair stopped being recorded, or the segment is older than the recent
        window)."""
        if name.path not in self.watch:
            return "drop"
        now, wall_now = self.clock(), self.wall_clock()
        decision = self.state.decide(name, now, wall_now)
        if decision.status == "later":
            at = self.state.hole_at(name, now, wall_now)
            item = self.watch.get(name.path)
            if at is None or item is None:
                return "wait"
            item.scheduled = None  # this plan came due
            self._schedule(item, at, now)
            return "again"
        store = self.ingest.store

        def near_duplicate_on_disk() -> bool:  # the index may not have it yet
            names = store.raw_filenames(name.channel, name.quality, name.hour)
            return name in NearDuplicates(name.channel, name.quality, name.hour, names)

        if await trio.to_thread.run_sync(near_duplicate_on_disk):
            self.watch.forget(name.path)
            return "drop"
        if name.path not in self.watch:  # settled meanwhile
            return "drop"
        self.watch.forget(name.path)
        log.debug("deferred %s comes due: %s (%s)", name.path, decision.status,
                  decision.reason)
        if decision.reason == "hole":
            self._holes.add(name.path)
            return "repair"
        return "drop"

    def file_event(self, name: SegmentName, kind: Kind, deleted: bool) -> None:
        """A final or temp file appeared (or went) in the archive."""
        if kind is not Kind.SEGMENT:
            return
        if name.type == "temp":
            if deleted:
                self.state.temp_gone(name)
                self._plan_repairs(name)  # a download given up: its segment may be a hole
            else:
                self.state.temp_appeared(name, self.clock())
            return
        if deleted:
            return
        path = name.path
        self.watch.forget(path)
        if self.ingest.came_from_peer(path):  # a peer sent it: not our downloader's
            if path in self._holes:
                self._holes.discard(path)
                self.metrics.push_holes_filled.inc()
                self.holes_filled_by_push += 1
            return
        if path in self._written:
            # the same file reported again (a synthetic "created" for a new hour
            # directory, a close, an attribute change): not a second write. Taken as
            # one, it taught a lateness as late as the clock had moved since
            return
        self._written.add(path)
        self.state.segment_written(name, self.clock(), self.wall_clock())
        self._plan_repairs(name)
        if _bytes_key(name) in self._deferred:
            self._deferred.discard(_bytes_key(name))
            self.metrics.push_deferral_saved.inc()
            self.deferral_saved += 1

    def _plan_repairs(self, name: SegmentName) -> None:
        """The downloader wrote (or gave up) a file of `name`'s pair: the watched
        offers it passed are repaired once they are holes."""
        if self.repairer is None:
            return
        now = self.clock()
        for item, at in self.watch.plan(self.state, name.channel, name.quality, now,
                                        self.wall_clock(), self.recent_window):
            self.repairer.schedule(item, at - now)

    def _schedule(self, item: Watched, at: float, now: float) -> None:
        """Repair `item` at `at` (`now`'s clock), unless it is planned sooner."""
        if self.repairer is not None and (item.scheduled is None or item.scheduled > at):
            item.scheduled = at
            self.repairer.schedule(item, at - now)

    # ---- offers ----

    async def offer_reply(self, name: SegmentName, accepts_later: bool,
                          sender: str | None = None) -> m.OfferReply | m.OfferLater:
        """want / have / tombstoned, or OfferLater (only to a sender that `accepts_later`).
        `sender`: the offering node's name, if it said (whom to ask for a hole)."""
        if accepts_later and self.repairer is not None \
                and name.path in self.repairer.in_flight:
            return m.OfferLater(MIN_RETRY_AFTER)  # being fetched as a hole right now
        # from the index, not the disk: a lookup of a name not yet in the hour
        # directory waits for the directory's lock, held by renames waiting for a
        # journal commit (4-8 ms, up to 29 ms, per offer in a busy 5-node cluster).
        # A tombstone or copy not indexed yet is still refused when the upload is
        # written and committed (Ingest checks the disk then)
        status = offer_status(self.index.has(name, Kind.SEGMENT),
                              self.index.has(name, Kind.TOMBSTONE))
        if status != "want":
            return m.OfferReply(status)
        if name in NearDuplicates(name.channel, name.quality, name.hour,
                                  self.index.names(name.channel, name.quality, name.hour)):
            self.metrics.push_near_duplicates.inc()
            return m.OfferReply("have")
        if not self.enabled or not accepts_later or not name.replicable:
            return m.OfferReply("want")
        now, wall_now = self.clock(), self.wall_clock()
        decision = self.state.decide(name, now, wall_now)
        # which offers wait for our downloader, and why (what a recorder received)
        log.debug("offer of %s from %s: %s (%s)", name.path, sender or "a peer",
                  decision.status, decision.reason)
        if decision.status == "later":
            assert decision.retry_after is not None
            self.metrics.push_deferred.inc()
            self.deferred_offers += 1
            self._deferred.add(_bytes_key(name))
            if self.repairer is not None:
                self.watch.deferred(name, sender)
                # due once the downloader's lag is over (passed already) or once it is
                # overdue by the clock (ahead of the downloader)
                at = self.state.hole_at(name, now, wall_now)
                item = self.watch.get(name.path)
                if at is not None and item is not None:
                    self._schedule(item, at, now)
            return m.OfferLater(decision.retry_after)
        if decision.reason == "hole":
            self._holes.add(name.path)
        return m.OfferReply("want")

    def recorded_pairs(self) -> list[m.RecordedPairStatus]:
        """What status shows of the pairs our downloader records (times as wall
        times, from the tracker's own clock)."""
        now, wall = self.clock(), time.time()
        return [m.RecordedPairStatus(channel, quality, declared, recording,
                                     None if last is None else wall - (now - last))
                for channel, quality, declared, recording, last in self.state.pairs(now)]

    def counts(self) -> DeferralCounts:
        return DeferralCounts(self.enabled, self.deferred_offers, self.deferral_saved,
                              self.holes_filled_by_push)


def _bytes_key(name: SegmentName) -> str:
    """Pair and hash: our downloader's copy counts as the deferred one even when its
    start time differs by a few microseconds (a near-duplicate)."""
    return f"{name.channel}/{name.quality}/{name.hash_text}"
