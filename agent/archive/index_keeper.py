"""Keeps the archive index and its persistent copy (ROOT/.segsync/index.sqlite3) in step.

- Start: a warm start lists only the hour directories whose mtime or ctime moved
  since their stored listing, or whose listing was racily clean (protocol/
  listing_stamp.py); a missing, damaged or other-version file means a full scan,
  which fills a fresh one as it goes (names of cold hours never stay in memory).
- Runtime: every `flush_interval` the hours changed since their last save are listed
  again and saved in one transaction (checked: names equal to the directory's
  listing, no temp file of ours, get the directory's stamp; others are saved
  unverified and listed again at the next start); then the hot-hour policy makes
  hours cold. Cancellation (SIGTERM) saves once more, so a clean restart is warm.
- `sweep`: the periodic and after-watcher-loss pass: stats every hour directory and
  lists only the ones whose stamp moved (LocalFiles reconciles them).
- `.segsync/` read-only or full: the index stays in memory (every name, as before)
  and the status says why.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from protocol import messages as m
from protocol.digests import hour_digest
from protocol.errors import SegmentNameError
from protocol.index.hot_hours import DEFAULT_MAX_HOT_HOURS, HotHours, pinned_hours
from protocol.index.schema import HourCounts
from protocol.index.listing_stamp import DirStamp, ListingStamp, plan_sweep
from protocol.names import parse_hour

from .index import ArchiveIndex, HourKey, HourRecord
from .index_db import (
    HourRow, IndexCorrupt, IndexDb, IndexUnavailable, IndexWriteFailed,
)
from .store import Store, classify_hour, is_temp_file

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 5.0      # seconds between saves of changed hours
SCAN_BATCH = 64           # hour directories per transaction of a scan
SHUTDOWN_SAVE_TIMEOUT = 60.0

Clock = Callable[[], dt.datetime]


@dataclass(slots=True)
class Listed:
    """One hour directory as listed: names (the index's kinds), the stamp read before
    the listing, and whether a temp file of ours was there (then not a clean listing)."""

    names: list[str]
    replicable: list[str]
    counts: HourCounts
    stamp: DirStamp
    had_temp: bool


def dir_stamp(path: str | os.PathLike) -> DirStamp | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return DirStamp(st.st_mtime_ns, st.st_ctime_ns)


def walk_hour_dirs(store: Store) -> dict[HourKey, DirStamp]:
    """Every hour directory's stamp: one stat each, no hour directory is read. Each
    is stat'ed by name in its open quality directory: building and resolving a path
    per hour was most of a warm start's index work."""
    out: dict[HourKey, DirStamp] = {}
    for channel, quality in store.pairs():
        try:
            fd = os.open(store.root / channel / quality,
                         os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    hour = entry.name
                    try:
                        if hour.startswith(".") or not entry.is_dir():
                            continue
                        st = entry.stat()  # fstatat(fd, hour)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    try:
                        parse_hour(hour)
                    except SegmentNameError as e:
                        store.log_bad_name(f"{store.root / channel / quality / hour}", str(e))
                        continue
                    out[(channel, quality, hour)] = DirStamp(st.st_mtime_ns, st.st_ctime_ns)
        finally:
            os.close(fd)
    return out


def list_hour_dir(store: Store, key: HourKey, remove_temp: bool = False) -> Listed | None:
    """Stat, then list one hour directory (None: gone). `remove_temp` removes temp
    files of ours first (a crash's leftovers: at start-up only)."""
    path = store.root / key[0] / key[1] / key[2]
    for _ in range(2):
        stamp = dir_stamp(path)  # before the listing: a change after it moves the stamp
        if stamp is None:
            return None
        try:
            raw = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        temps = [n for n in raw if n[:1] == "." and is_temp_file(n)]
        if not (temps and remove_temp):
            break
        for n in temps:
            store._remove_temp(path / n)
        remove_temp = False  # and listed again, with the stamp after the removal
    listing = classify_hour(*key, raw, store.log_bad_name)
    names = listing.segments + listing.hidden + listing.tombstones
    return Listed(names, listing.replicable,
                  HourCounts(len(listing.segments), len(listing.hidden), len(listing.tombstones)),
                  stamp, bool(temps))


class IndexMetrics:
    """The index's gauges, computed when scraped (from per-hour data, never names)."""

    def __init__(self, registry: CollectorRegistry, keeper: "IndexKeeper") -> None:
        self.cold_loads = Counter(
            "segsync_index_cold_loads", "Hours whose names were loaded from the persistent "
            "index on demand", registry=registry)
        Gauge("segsync_index_bytes", "Size of the persistent index on disk (file and WAL)",
              registry=registry).set_function(keeper.size_on_disk)
        Gauge("segsync_index_hours", "Hours in the index", registry=registry
              ).set_function(lambda: len(keeper.index.items()))
        Gauge("segsync_index_hot_hours", "Hours whose names are in memory",
              registry=registry).set_function(keeper.index.hot_hours)
        Gauge("segsync_index_persistent", "1 when the index is saved under ROOT/.segsync/, "
              "0 when it runs in memory only", registry=registry
              ).set_function(lambda: 1 if keeper.db is not None and not keeper.save_error else 0)
        self.start_phase = Gauge(
            "segsync_index_start_phase_seconds", "Duration of each phase of the last start-up "
            "indexing", ["phase"], registry=registry)


@dataclass
class StartReport:
    kind: str = ""                                      # warm, or full scan (why)
    phases: list[tuple[str, float]] = field(default_factory=list)
    trusted: int = 0
    listed: int = 0
    gone: int = 0


class IndexKeeper:
    def __init__(self, store: Store, index: ArchiveIndex, registry: CollectorRegistry,
                 persistent: bool = True, flush_interval: float = FLUSH_INTERVAL,
                 max_hot_hours: int = DEFAULT_MAX_HOT_HOURS,
                 clock: Clock = lambda: dt.datetime.now(dt.timezone.utc),
                 fs_clock: Callable[[], int] | None = None) -> None:
        self.store = store
        self.index = index
        self.persistent = persistent
        self.flush_interval = flush_interval
        self.clock = clock
        self.fs_clock = fs_clock  # now on the archive's file-system clock (tests move it)
        self.db: IndexDb | None = None
        self.problem: str | None = None      # why the index is in memory only
        self.save_error: str | None = None   # the last save failed: why
        self.start_report = StartReport()
        index.hot = HotHours(max_hot_hours)
        index.clock = clock
        self.metrics = IndexMetrics(registry, self)

    # ---- start-up ----

    async def start(self, remove_temp: bool = True) -> StartReport:
        """Index the archive: warm from the persistent index where it can be trusted,
        else by a full scan. Changes seen meanwhile (watcher, peers) are kept."""
        report = self.start_report = StartReport()
        began = last = time.monotonic()

        def phase(name: str) -> None:
            nonlocal last
            now = time.monotonic()
            report.phases.append((name, now - last))
            self.metrics.start_phase.labels(name).set(now - last)
            last = now

        self.index.begin_rebuild()
        reason: str | None = "persistent index off"
        rows: list[HourRow] = []
        if self.persistent:
            reason = await trio.to_thread.run_sync(self._open)
            if self.db is not None and reason is None:
                try:
                    rows = await trio.to_thread.run_sync(self.db.summaries)
                except IndexCorrupt as e:
                    reason = f"unreadable ({e})"
                    await trio.to_thread.run_sync(self._reset_db)
            phase("open")
        stamps = await trio.to_thread.run_sync(walk_hour_dirs, self.store)
        phase("walk")
        if reason is None:
            plan = plan_sweep({r.key: r.listing for r in rows}, stamps)
            stored = {r.key: r for r in rows}
            relist, gone, clear = plan.relist, plan.gone, False
            trusted = [stored[k] for k in plan.trusted]
            report.kind = "warm"
        else:
            relist, gone, clear, trusted = sorted(stamps), [], True, []
            report.kind = f"full scan ({reason})"
            if self.db is not None:
                (log.info if reason == "no index yet" else log.warning)(
                    "index: %s at %s: rebuilding it by a full scan", reason, self.db.path)
        listed = await trio.to_thread.run_sync(self._scan, relist, gone, clear, remove_temp)
        phase("list")
        records = [HourRecord(r.key, None, r.digest, r.counts, r.spans, r.listing)
                   for r in trusted] + listed
        self.index.loader = self.load_names if self.db is not None else None
        self.index.install(records)
        self.index.evict(self.clock())
        phase("install")
        report.trusted, report.listed, report.gone = len(trusted), len(relist), len(gone)
        log.info("index: %s start in %.2fs: %d hours as saved, %d listed, %d gone; %s",
                 report.kind, time.monotonic() - began, report.trusted, report.listed,
                 report.gone, ", ".join(f"{n} {s:.2f}s" for n, s in report.phases))
        return report

    def _open(self) -> str | None:
        db = IndexDb(self.store.root)
        try:
            reason = db.open()
        except IndexUnavailable as e:
            self.problem = str(e)
            log.warning("index: %s: running with an in-memory index (every start is a "
                        "full scan)", e)
            return "unavailable"
        self.db = db
        return reason

    def _reset_db(self) -> None:
        """A damaged file found at run time: set it aside for a fresh one. Hours
        that were cold load their names from their directories until saved again."""
        assert self.db is not None
        self.db.close()
        try:
            self.db._recreate().close()
            self.db.open()
        except IndexUnavailable as e:
            self.problem = str(e)
            self.db = None

    def _scan(self, keys: list[HourKey], gone: list[HourKey], clear: bool,
              remove_temp: bool) -> list[HourRecord]:
        """List these hour directories (worker thread), save them as they come, and
        return them: cold (digest and counts) unless in memory is where they stay."""
        pinned = pinned_hours(self.clock())
        out: list[HourRecord] = []
        first = True
        for i in range(0, max(len(keys), 1), SCAN_BATCH):
            batch = keys[i:i + SCAN_BATCH]
            listed_at = self._fs_now()
            rows = []
            for key in batch:
                lst = list_hour_dir(self.store, key, remove_temp)
                if lst is None or not lst.names:
                    continue
                listing = None if lst.had_temp else ListingStamp(lst.stamp, listed_at)
                digest = hour_digest(lst.replicable)
                rows.append(HourRow(key, listing, digest, lst.counts, None, lst.names))
            saved = self._save_rows(rows, gone if first else (), clear and first)
            first = False
            for row in rows:
                keep = not saved or row.key[2] in pinned
                out.append(HourRecord(row.key, row.names if keep else None, row.digest,
                                      row.counts, None, row.listing, unsaved=not saved))
        return out

    def _save_rows(self, rows, deleted, clear: bool, spans=()) -> bool:
        if self.db is None:
            return False
        try:
            self.db.write(rows, deleted, spans, clear=clear)
        except (IndexWriteFailed, IndexCorrupt) as e:
            if self.save_error is None:
                log.warning("index: cannot save to %s (%s): running on with the index in "
                            "memory until a save succeeds", self.db.path, e)
            self.save_error = str(e)
            return False
        if self.save_error is not None:
            log.info("index: saving to %s again", self.db.path)
            self.save_error = None
        return True

    def _fs_now(self) -> int:
        if self.fs_clock is not None:
            return self.fs_clock()
        return self.db.fs_now() if self.db is not None else time.time_ns()

    # ---- cold hours ----

    def load_names(self, key: HourKey) -> list[str]:
        """A cold hour's names: from the persistent index, else (damaged) the directory."""
        self.metrics.cold_loads.inc()
        if self.db is not None:
            try:
                names = self.db.names(key)
                if names is not None:
                    return names
            except IndexCorrupt as e:
                log.error("index: %s is damaged (%s): listing the directory instead; the "
                          "index is rebuilt", self.db.path, e)
                if threading.current_thread() is threading.main_thread():
                    self._reset_db()  # (a worker thread computing map spans leaves it)
        lst = list_hour_dir(self.store, key)
        return lst.names if lst is not None else []

    # ---- saving ----

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Save changed hours every `flush_interval`, then let cold hours go; on
        cancellation (SIGTERM, Ctrl-C) save once more and close the file."""
        task_status.started()
        try:
            while True:
                await trio.sleep(self.flush_interval)
                await self.flush()
                self.index.evict(self.clock())
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(SHUTDOWN_SAVE_TIMEOUT):
                    await self.flush()
                    if self.db is not None:
                        await trio.to_thread.run_sync(self.db.checkpoint)

    async def flush(self) -> int:
        """Save the hours changed since their last save. Returns how many."""
        if self.db is None:
            self.index.deleted.clear()  # nowhere to delete them from
            return 0
        changed, spans_only = [], []
        for key, e in self.index.items():
            if e.unsaved:  # (cold: a sweep found its directory moved, names as saved)
                changed.append((key, tuple(e.names) if e.names is not None else None,
                                e.generation, e.digest(), e.counts(), e.cached_spans()))
            elif e.spans_unsaved and (spans := e.cached_spans()) is not None:
                spans_only.append((key, spans, e.generation))
        deleted = set(self.index.deleted)
        if not (changed or spans_only or deleted):
            return 0
        self.index.deleted -= deleted
        listings = await trio.to_thread.run_sync(self._save_changed, changed, deleted, spans_only)
        if listings is None:
            self.index.deleted |= {k for k in deleted if self.index.entry(k) is None}
            return 0
        for (key, _, generation, *_), listing in zip(changed, listings, strict=True):
            e = self.index.entry(key)
            if e is not None and e.generation == generation:
                e.unsaved = False
                e.listing = listing
                if e.cached_spans() is not None:
                    e.spans_unsaved = False
        for key, _, generation in spans_only:
            e = self.index.entry(key)
            if e is not None and e.generation == generation:
                e.spans_unsaved = False
        return len(changed)

    def _save_changed(self, changed, deleted, spans_only) -> list[ListingStamp | None] | None:
        """Worker thread: each changed hour's names checked against its directory's
        listing (equal, no temp file: saved with the stamp), then one transaction."""
        listed_at = self._fs_now()
        rows, listings = [], []
        for key, names, _, digest, counts, spans in changed:
            if names is None:  # a cold hour: checked with its names as saved
                try:
                    names = self.db.names(key) if self.db is not None else None
                except IndexCorrupt:
                    names = None  # its directory is listed at the next start
            lst = list_hour_dir(self.store, key)
            listing = None
            if names is not None and lst is not None and not lst.had_temp \
                    and len(lst.names) == len(names) and set(lst.names) == set(names):
                listing = ListingStamp(lst.stamp, listed_at)
            listings.append(listing)
            if names is not None:
                rows.append(HourRow(key, listing, digest, counts, spans, list(names)))
        ok = self._save_rows(rows, sorted(deleted), False,
                             [(k, s) for k, s, _ in spans_only])
        return listings if ok else None

    # ---- the mtime sweep ----

    async def sweep(self) -> tuple[dict[HourKey, list[str]], list[HourKey]]:
        """Hour directories whose stamp moved since the index's listing of them, listed
        (names by hour), and the hours whose directory is gone."""
        stamps = await trio.to_thread.run_sync(walk_hour_dirs, self.store)
        plan = plan_sweep({k: e.listing for k, e in self.index.items()}, stamps)

        def list_changed() -> dict[HourKey, list[str]]:
            out = {}
            for key in plan.relist:
                lst = list_hour_dir(self.store, key)
                if lst is not None:
                    out[key] = lst.names
            return out

        return await trio.to_thread.run_sync(list_changed), plan.gone

    # ---- status ----

    def size_on_disk(self) -> int:
        return self.db.size_on_disk() if self.db is not None else 0

    def status(self) -> m.IndexStatus:
        problem = self.problem or (f"not saved: {self.save_error}" if self.save_error else None)
        return m.IndexStatus(
            persistent=self.db is not None and self.save_error is None,
            hours=len(self.index.items()), hot_hours=self.index.hot_hours(),
            cold_loads=self.index.cold_loads, bytes=self.size_on_disk(),
            start=self.start_report.kind or None,
            start_phases=[(n, round(s, 4)) for n, s in self.start_report.phases],
            problem=problem)


__all__ = ["IndexKeeper", "Listed", "list_hour_dir", "walk_hour_dirs"]
