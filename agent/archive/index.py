"""The archive index: what rounds, listings and maps read without reading a directory.

Per hour it keeps the digest, the counts and the coverage spans; the file names
only while the hour is hot (protocol/index/hot_hours.py: the current and previous hour,
and a bounded LRU of hours recently written or read). A cold hour's names are
loaded on demand through `loader` (the persistent index, agent/archive/index_keeper.py);
an index without a loader keeps every name (the one-shot commands, tests).

Names are the keys of a dict per hour: ~30 bytes a key against a set's ~70, and a
dict of strings to None is not tracked by the cyclic GC, which would otherwise visit
every indexed name on each full collection.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable, Iterable

from protocol.coverage import EMPTY, HourSpans, hour_spans
from protocol.digests import hour_digest, hour_in_range, pair_digest
from protocol.index.hot_hours import HotHours
from protocol.index.schema import HourCounts, count_names
from protocol.index.listing_stamp import ListingStamp
from protocol.names import (
    SEGMENT_SUFFIX,
    TOMBSTONE_SUFFIX,
    Kind,
    SegmentName,
    segment_filename_for,
    tombstone_filename_for,
)

HourKey = tuple[str, str, str]  # channel, quality, hour
# a cold hour's names, from wherever they are kept (None: nowhere, the hour is empty)
Loader = Callable[[HourKey], Iterable[str] | None]


class HourEntry:
    """One hour: its names while hot (None while cold), digest, counts and spans
    (cached, computed from the names when they change), and what the persistent
    index knows of it."""

    __slots__ = ("names", "_digest", "_spans", "_counts", "listing", "unsaved",
                 "spans_unsaved", "generation")

    def __init__(self, names: Iterable[str] | None = ()) -> None:
        self.names: dict[str, None] | None = (
            dict.fromkeys(names) if names is not None else None)  # used as a set
        self._digest: bytes | None = None
        self._spans: HourSpans | object | None = None  # or a claim_spans token
        self._counts: HourCounts | None = None
        # the listing the saved names were checked against (None: not checked)
        self.listing: ListingStamp | None = None
        self.unsaved = False       # changed since the persistent index last saved it
        self.spans_unsaved = False
        self.generation = 0        # bumps on every change

    @classmethod
    def cold(cls, digest: bytes, counts: HourCounts, spans: HourSpans | None,
             listing: ListingStamp | None) -> "HourEntry":
        entry = cls(None)
        entry._digest, entry._counts, entry._spans, entry.listing = digest, counts, spans, listing
        return entry

    @property
    def hot(self) -> bool:
        return self.names is not None

    def _names(self) -> dict[str, None]:
        assert self.names is not None, "a cold hour's names are loaded by the index"
        return self.names

    def replicable(self) -> list[str]:
        names = self._names()
        return sorted(
            n for n in names
            if n.endswith(TOMBSTONE_SUFFIX) or tombstone_filename_for(n) not in names
        )

    def digest(self) -> bytes:
        if self._digest is None:
            self._digest = hour_digest(self.replicable())
        return self._digest

    def counts(self) -> HourCounts:
        if self._counts is None:
            self._counts = count_names(self._names())
        return self._counts

    def cached_spans(self) -> HourSpans | None:
        return self._spans if isinstance(self._spans, HourSpans) else None

    def spans(self) -> HourSpans:
        """What the hour covers (for coverage maps), cached like the digest."""
        if not isinstance(self._spans, HourSpans):
            self._spans = hour_spans(self._names())
            self.spans_unsaved = True
        return self._spans

    def claim_spans(self) -> tuple[object, tuple[str, ...] | None] | None:
        """For computing the spans elsewhere (a worker thread): a token and the names
        now (None for a cold hour: the thread loads them), or None when they are
        cached. Any change voids the token."""
        if isinstance(self._spans, HourSpans):
            return None
        token = self._spans = object()
        return token, (tuple(self.names) if self.names is not None else None)

    def offer_spans(self, token: object, spans: HourSpans) -> None:
        if self._spans is token:
            self._spans = spans
            self.spans_unsaved = True

    def changed(self) -> None:
        self._digest = self._spans = self._counts = None
        self.unsaved = True
        self.spans_unsaved = False
        self.generation += 1


PairKey = tuple[str, str]
EVICT_SLACK = 16  # hot hours beyond the bound (besides the pinned) before a load evicts


@dataclass(slots=True)
class HourRecord:
    """An hour as a scan or the persistent index found it, for `install`: names, or
    (cold) its digest and counts."""

    key: HourKey
    names: list[str] | None
    digest: bytes | None = None
    counts: HourCounts | None = None
    spans: HourSpans | None = None
    listing: ListingStamp | None = None
    unsaved: bool = False


class ArchiveIndex:
    def __init__(self, loader: Loader | None = None, hot: HotHours | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)
                 ) -> None:
        self._pairs: dict[PairKey, dict[str, HourEntry]] = {}
        self.version = 0  # bumps on every change; cheap "did anything move" check
        # changes made while a full scan runs, replayed onto its result
        self._journal: list[tuple[bool, SegmentName, Kind]] | None = None
        self._rebuilds = 0  # scans begun and not yet swapped in
        self.loader = loader
        self.hot = hot if hot is not None else HotHours()
        self.clock = clock  # for the hot-hour policy (which hours are current)
        self.cold_loads = 0  # hours whose names were loaded on demand
        self.deleted: set[HourKey] = set()  # hours gone since the last save

    def begin_rebuild(self) -> None:
        """A full scan starts: journal every change until its `replace_all`."""
        if self._journal is None:
            self._journal = []
        self._rebuilds += 1

    # ---- hot and cold ----

    def _entry(self, channel: str, quality: str, hour: str) -> HourEntry | None:
        return self._pairs.get((channel, quality), {}).get(hour)

    def _hot_names(self, key: HourKey, entry: HourEntry) -> dict[str, None]:
        """The hour's names, loaded if it is cold; it becomes the most recently used."""
        if entry.names is None:
            assert self.loader is not None
            names = entry.names = dict.fromkeys(self.loader(key) or ())
            self.cold_loads += 1
            if len(names) != entry.counts().files:  # not what was counted: recount
                entry.changed()
            self.hot.touch(key)
            if len(self.hot) > self.hot.max_hours + EVICT_SLACK:
                self.evict(self.clock(), keep=key)  # a burst of loads stays bounded
            return names
        if self.loader is not None:
            self.hot.touch(key)
        return entry.names

    def evict(self, now: dt.datetime, keep: HourKey | None = None) -> int:
        """Make cold the hours the hot-hour policy lets go (never an unsaved one, nor
        `keep`); their digest and counts stay. Returns how many."""
        if self.loader is None:
            return 0

        def unsaved(key) -> bool:
            if key == keep:
                return True
            entry = self._entry(*key)
            return entry is not None and (entry.unsaved or entry.spans_unsaved)

        evicted = 0
        for key in self.hot.evictions(now, unsaved):
            entry = self._entry(*key)
            if entry is not None and entry.names is not None:
                entry.digest()
                entry.counts()
                entry.names = None
                evicted += 1
        return evicted

    def hot_hours(self) -> int:
        return sum(1 for hours in self._pairs.values() for e in hours.values() if e.hot)

    # ---- updates ----

    def add(self, name: SegmentName, kind: Kind) -> bool:
        """Record a file; True if it was new. Temp segments are never indexed."""
        if not name.replicable:
            return False
        filename = name.filename if kind is Kind.SEGMENT else name.tombstone_filename
        key = (name.channel, name.quality, name.hour)
        hours = self._pairs.setdefault((name.channel, name.quality), {})
        entry = hours.get(name.hour)
        if entry is None:
            entry = hours[name.hour] = HourEntry()
            self.deleted.discard(key)
        if self._journal is not None:
            self._journal.append((True, name, kind))
        names = self._hot_names(key, entry)
        if filename in names:
            return False
        names[filename] = None
        entry.changed()
        self.version += 1
        return True

    def discard(self, name: SegmentName, kind: Kind) -> bool:
        filename = name.filename if kind is Kind.SEGMENT else name.tombstone_filename
        if self._journal is not None:
            self._journal.append((False, name, kind))
        hours = self._pairs.get((name.channel, name.quality))
        entry = hours.get(name.hour) if hours else None
        if entry is None:
            return False
        key = (name.channel, name.quality, name.hour)
        names = self._hot_names(key, entry)
        if filename not in names:
            return False
        del names[filename]
        entry.changed()
        if not names:
            self._drop(key)
        self.version += 1
        return True

    def _drop(self, key: HourKey) -> None:
        hours = self._pairs.get(key[:2])
        if hours is not None and hours.pop(key[2], None) is not None:
            self.deleted.add(key)
            self.hot.forget(key)
            if not hours:
                del self._pairs[key[:2]]

    def drop_hour(self, channel: str, quality: str, hour: str) -> bool:
        """The hour's directory is gone: forget all of it."""
        if self._entry(channel, quality, hour) is None:
            return False
        self._drop((channel, quality, hour))
        self.version += 1
        return True

    def replace_all(self, scanned: Iterable[tuple[str, str, str, Iterable[str]]]) -> None:
        """Swap in the result of a full scan: (channel, quality, hour, replicable names)."""
        self.install(HourRecord((c, q, h), list(names), unsaved=True)
                     for c, q, h, names in scanned)

    def install(self, records: Iterable[HourRecord]) -> None:
        """Swap in a whole index (a scan's, or a warm start's: cold hours as digests
        and counts), then replay the changes made meanwhile."""
        old_pairs = self._pairs
        pairs: dict[PairKey, dict[str, HourEntry]] = {}
        for r in records:
            channel, quality, hour = r.key
            if r.names is None:
                assert r.digest is not None and r.counts is not None
                entry = HourEntry.cold(r.digest, r.counts, r.spans, r.listing)
            else:
                entry = HourEntry(r.names)
                if not entry.names:
                    continue
                old = old_pairs.get((channel, quality), {}).get(hour)
                if old is not None and old.names == entry.names:
                    entry = old  # keeps the cached digest
                else:
                    entry._digest, entry._counts, entry._spans = r.digest, r.counts, r.spans
                if self.loader is not None:
                    self.hot.touch(r.key)
            entry.listing = r.listing
            entry.unsaved = r.unsaved
            pairs.setdefault((channel, quality), {})[hour] = entry
        for (channel, quality), hours in old_pairs.items():
            for hour in hours:
                if hour not in pairs.get((channel, quality), {}):
                    self.deleted.add((channel, quality, hour))
                    self.hot.forget((channel, quality, hour))
        self._pairs = pairs
        self.version += 1
        # Replay in order onto the scan: each name ends as its latest change left it.
        # With overlapping scans, the journal since the oldest one is replayed (the
        # changes are idempotent), and kept while a scan is still running.
        journal, self._journal = self._journal, None
        self._rebuilds = max(0, self._rebuilds - 1)
        for added, name, kind in journal or ():
            (self.add if added else self.discard)(name, kind)
        if self._rebuilds and journal is not None:
            self._journal = journal

    # ---- what the persistent index saves ----

    def items(self) -> list[tuple[HourKey, HourEntry]]:
        return [((c, q, h), e) for (c, q), hours in self._pairs.items()
                for h, e in hours.items()]

    def entry(self, key: HourKey) -> HourEntry | None:
        return self._entry(*key)

    def mark_unsaved(self, key: HourKey) -> None:
        """Have the persistent index check and save the hour again."""
        entry = self._entry(*key)
        if entry is not None:
            entry.unsaved = True

    # ---- queries ----

    def has(self, name: SegmentName, kind: Kind) -> bool:
        entry = self._entry(name.channel, name.quality, name.hour)
        if entry is None:
            return False
        filename = name.filename if kind is Kind.SEGMENT else name.tombstone_filename
        return filename in self._hot_names((name.channel, name.quality, name.hour), entry)

    def pairs(self) -> list[PairKey]:
        return sorted(self._pairs)

    def hours(self, channel: str, quality: str) -> list[str]:
        return sorted(self._pairs.get((channel, quality), {}))

    def names(self, channel: str, quality: str, hour: str) -> frozenset[str]:
        entry = self._entry(channel, quality, hour)
        if entry is None:
            return frozenset()
        return frozenset(self._hot_names((channel, quality, hour), entry))

    def peek_names(self, channel: str, quality: str, hour: str) -> frozenset[str]:
        """The hour's names without making a cold hour hot (a sweep compares every
        hour that may have moved with its directory: most did not, and stay cold)."""
        entry = self._entry(channel, quality, hour)
        if entry is None:
            return frozenset()
        if entry.names is not None or self.loader is None:
            return frozenset(entry.names or ())
        return frozenset(self.loader((channel, quality, hour)) or ())

    def replicable(self, channel: str, quality: str, hour: str) -> list[str]:
        entry = self._entry(channel, quality, hour)
        if entry is None:
            return []
        self._hot_names((channel, quality, hour), entry)
        return entry.replicable()

    def visible_segments(self, channel: str, quality: str, hour: str) -> list[str]:
        return [n for n in self.replicable(channel, quality, hour) if n.endswith(SEGMENT_SUFFIX)]

    def tombstones(self, channel: str, quality: str, hour: str) -> list[str]:
        return [n for n in self.replicable(channel, quality, hour)
                if n.endswith(TOMBSTONE_SUFFIX)]

    def hour_counts(self, channel: str, quality: str, hour: str) -> HourCounts:
        """Counts without loading a cold hour's names."""
        entry = self._entry(channel, quality, hour)
        return entry.counts() if entry is not None else HourCounts()

    def hour_digests(self, channel: str, quality: str, first: str, last: str
                     ) -> list[tuple[str, bytes]]:
        """Digests of the hours first..last: a cold hour's is stored, never recomputed."""
        hours = self._pairs.get((channel, quality), {})
        return sorted(
            (hour, entry.digest()) for hour, entry in hours.items()
            if hour_in_range(hour, first, last)
        )

    def pair_digests(self, first: str, last: str) -> list[tuple[str, str, bytes]]:
        """Top level: one digest per (channel, quality) with hours in range."""
        out = []
        for (channel, quality) in sorted(self._pairs):
            digests = self.hour_digests(channel, quality, first, last)
            if digests:
                out.append((channel, quality, pair_digest(digests)))
        return out

    def entries(self, channel: str, quality: str, first: str, last: str) -> list[HourEntry]:
        """The hours first..last of a pair, as entries (for caching derived data)."""
        hours = self._pairs.get((channel, quality), {})
        return [e for hour, e in hours.items() if hour_in_range(hour, first, last)]

    def keyed_entries(self, channel: str, quality: str, first: str, last: str
                      ) -> list[tuple[HourKey, HourEntry]]:
        hours = self._pairs.get((channel, quality), {})
        return [((channel, quality, hour), e) for hour, e in hours.items()
                if hour_in_range(hour, first, last)]

    def hour_spans(self, channel: str, quality: str, hour: str) -> HourSpans:
        entry = self._entry(channel, quality, hour)
        if entry is None:
            return EMPTY
        cached = entry.cached_spans()
        if cached is not None:
            return cached
        self._hot_names((channel, quality, hour), entry)
        return entry.spans()

    def segment_count(self) -> int:
        """Visible and hidden segment files, from per-hour counts (no name is walked
        but those of hours changed since their counts were last taken)."""
        total = 0
        for hours in self._pairs.values():
            for e in hours.values():
                c = e.counts()
                total += c.segments + c.hidden
        return total


__all__ = ["ArchiveIndex", "HourEntry", "HourRecord", "segment_filename_for"]
