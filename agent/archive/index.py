"""In-memory index of the archive, so an in-sync backfill round reads no directory.

Fed by a full scan at start-up (and after watcher loss, and hourly), by the watcher
and by the store's own writes. Per segment it keeps one file-name string, a key of
its hour's dict: about 150 bytes, bounded by design (no per-segment objects beyond
that). A dict, not a set: a dict of strings to None is ~30 bytes a key against a
set's ~70, and is not tracked by the cyclic GC, which would otherwise visit every
indexed name on each full collection (~70 ms at 1M segments, in an in-sync round).
"""

from __future__ import annotations

from typing import Iterable

from protocol.coverage import EMPTY, HourSpans, hour_spans
from protocol.digests import hour_digest, hour_in_range, pair_digest
from protocol.names import (
    SEGMENT_SUFFIX,
    TOMBSTONE_SUFFIX,
    Kind,
    SegmentName,
    segment_filename_for,
    tombstone_filename_for,
)


class HourEntry:
    """File names (replicable .ts, hidden ones included, and .tombstone) of one hour."""

    __slots__ = ("names", "_digest", "_spans")

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names: dict[str, None] = dict.fromkeys(names)  # used as a set
        self._digest: bytes | None = None
        self._spans: HourSpans | object | None = None  # or a claim_spans token

    def replicable(self) -> list[str]:
        names = self.names
        return sorted(
            n for n in names
            if n.endswith(TOMBSTONE_SUFFIX) or tombstone_filename_for(n) not in names
        )

    def digest(self) -> bytes:
        if self._digest is None:
            self._digest = hour_digest(self.replicable())
        return self._digest

    def spans(self) -> HourSpans:
        """What the hour covers (for coverage maps), cached like the digest."""
        if not isinstance(self._spans, HourSpans):
            self._spans = hour_spans(self.names)
        return self._spans

    def claim_spans(self) -> tuple[object, tuple[str, ...]] | None:
        """For computing the spans elsewhere (a worker thread): a token and the names
        now, or None when they are cached. Any change voids the token."""
        if isinstance(self._spans, HourSpans):
            return None
        token = self._spans = object()
        return token, tuple(self.names)

    def offer_spans(self, token: object, spans: HourSpans) -> None:
        if self._spans is token:
            self._spans = spans

    def changed(self) -> None:
        self._digest = self._spans = None


PairKey = tuple[str, str]


class ArchiveIndex:
    def __init__(self) -> None:
        self._pairs: dict[PairKey, dict[str, HourEntry]] = {}
        self.version = 0  # bumps on every change; cheap "did anything move" check
        # changes made while a full scan runs, replayed onto its result
        self._journal: list[tuple[bool, SegmentName, Kind]] | None = None
        self._rebuilds = 0  # scans begun and not yet swapped in

    def begin_rebuild(self) -> None:
        """A full scan starts: journal every change until its `replace_all`."""
        if self._journal is None:
            self._journal = []
        self._rebuilds += 1

    # ---- updates ----

    def add(self, name: SegmentName, kind: Kind) -> bool:
        """Record a file; True if it was new. Temp segments are never indexed."""
        if not name.replicable:
            return False
        filename = name.filename if kind is Kind.SEGMENT else name.tombstone_filename
        hours = self._pairs.setdefault((name.channel, name.quality), {})
        entry = hours.get(name.hour)
        if entry is None:
            entry = hours[name.hour] = HourEntry()
        if self._journal is not None:
            self._journal.append((True, name, kind))
        if filename in entry.names:
            return False
        entry.names[filename] = None
        entry.changed()
        self.version += 1
        return True

    def discard(self, name: SegmentName, kind: Kind) -> bool:
        filename = name.filename if kind is Kind.SEGMENT else name.tombstone_filename
        if self._journal is not None:
            self._journal.append((False, name, kind))
        hours = self._pairs.get((name.channel, name.quality))
        entry = hours.get(name.hour) if hours else None
        if entry is None or filename not in entry.names:
            return False
        del entry.names[filename]
        entry.changed()
        if not entry.names:
            del hours[name.hour]
            if not hours:
                del self._pairs[(name.channel, name.quality)]
        self.version += 1
        return True

    def replace_all(self, scanned: Iterable[tuple[str, str, str, Iterable[str]]]) -> None:
        """Swap in the result of a full scan: (channel, quality, hour, replicable names)."""
        pairs: dict[PairKey, dict[str, HourEntry]] = {}
        for channel, quality, hour, names in scanned:
            entry = HourEntry(names)
            if entry.names:
                old = self._pairs.get((channel, quality), {}).get(hour)
                if old is not None and old.names == entry.names:
                    entry = old  # keeps the cached digest
                pairs.setdefault((channel, quality), {})[hour] = entry
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

    # ---- queries ----

    def has(self, name: SegmentName, kind: Kind) -> bool:
        entry = self._pairs.get((name.channel, name.quality), {}).get(name.hour)
        if entry is None:
            return False
        filename = name.filename if kind is Kind.SEGMENT else name.tombstone_filename
        return filename in entry.names

    def pairs(self) -> list[PairKey]:
        return sorted(self._pairs)

    def hours(self, channel: str, quality: str) -> list[str]:
        return sorted(self._pairs.get((channel, quality), {}))

    def names(self, channel: str, quality: str, hour: str) -> frozenset[str]:
        entry = self._pairs.get((channel, quality), {}).get(hour)
        return frozenset(entry.names) if entry else frozenset()

    def replicable(self, channel: str, quality: str, hour: str) -> list[str]:
        entry = self._pairs.get((channel, quality), {}).get(hour)
        return entry.replicable() if entry else []

    def visible_segments(self, channel: str, quality: str, hour: str) -> list[str]:
        return [n for n in self.replicable(channel, quality, hour) if n.endswith(SEGMENT_SUFFIX)]

    def tombstones(self, channel: str, quality: str, hour: str) -> list[str]:
        return [n for n in self.replicable(channel, quality, hour)
                if n.endswith(TOMBSTONE_SUFFIX)]

    def hour_digests(self, channel: str, quality: str, first: str, last: str) -> list[tuple[str, bytes]]:
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

    def hour_spans(self, channel: str, quality: str, hour: str) -> HourSpans:
        entry = self._pairs.get((channel, quality), {}).get(hour)
        return entry.spans() if entry else EMPTY

    def segment_count(self) -> int:
        return sum(
            sum(1 for n in e.names if n.endswith(SEGMENT_SUFFIX))
            for hours in self._pairs.values() for e in hours.values()
        )


__all__ = ["ArchiveIndex", "HourEntry", "segment_filename_for"]
