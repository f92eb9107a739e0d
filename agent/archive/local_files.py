"""Local files: what the watcher and rescans see becomes index entries and pushes.

This is the start of the push path: a final name that appears in the archive (the
downloader renamed it into place, an operator touched a tombstone) is indexed and,
unless it came from a peer (the echo guard in `Ingest`), announced to the pusher.
Watcher losses (queue overflow, inotify overflow) and a periodic timer trigger a full
rescan, which rebuilds the index and announces what the watcher never reported.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import trio

from protocol.errors import SegmentNameError
from protocol.hashing import SegmentHasher
from protocol.names import Kind, SegmentName, parse_path

from ..telemetry.metrics import Metrics
from .index import ArchiveIndex
from .index_keeper import IndexKeeper
from .ingest import Ingest
from .recent import RecentSet
from .store import Store, classify_hour
from .watcher import Batch

log = logging.getLogger(__name__)

HASH_CHUNK = 1024 * 1024
MAX_NEW_DIRECTORY_FILES = 100_000  # a directory moved in: files looked at, at most

# (name, kind, when the watcher saw it, the segment's size: None for a tombstone)
Announce = Callable[[SegmentName, Kind, float, "int | None"], None]
# told of every segment, temp or tombstone name that appears (deleted=False) or goes
Observe = Callable[[SegmentName, Kind, bool], None]


def verified_size(path: Path, name: SegmentName) -> int | None:
    """The file's size when its bytes hash to its name (so it is complete), else
    None."""
    hasher = SegmentHasher()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                hasher.update(chunk)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    return hasher.size if hasher.digest() == name.hash else None


def file_matches_name(path: Path, name: SegmentName) -> bool:
    """True when the file's bytes hash to its name (so it is complete)."""
    return verified_size(path, name) is not None


class LocalFiles:
    """Indexes local final names and announces the new ones (to the pusher)."""

    def __init__(self, store: Store, index: ArchiveIndex, ingest: Ingest, metrics: Metrics,
                 announce: Announce, rescan_interval: float,
                 observe: Observe | None = None, keeper: IndexKeeper | None = None) -> None:
        self.store = store
        self.root = str(store.root)
        self.index = index
        self.ingest = ingest
        self.metrics = metrics
        self.announce = announce
        self.rescan_interval = rescan_interval
        self.observe = observe  # the downloader tracker (downloader-aware push)
        self.keeper = keeper  # the persistent index: rescans are mtime sweeps
        self.announced = RecentSet(100_000)  # paths already announced for push
        self._rescan_wanted = trio.Event()
        self._rescan_reason = "start"

    def relative(self, path: str) -> str | None:
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:
            return None
        return None if rel.startswith("..") else rel.replace(os.sep, "/")

    async def handle_batch(self, batch: Batch) -> None:
        """The watcher's events: each path that may have become a final file."""
        if batch.rescan:
            self.request_rescan(batch.rescan)
        now = trio.current_time()
        for event in batch.events:
            rel = self.relative(event.path)
            if rel is None:
                continue
            if event.directory:
                await self._scan_new_directory(Path(event.path), now)
                continue
            try:
                name, kind = parse_path(rel)
            except SegmentNameError:
                continue  # temp files of ours, dot-files, junk: never replicated
            if self.observe is not None:
                self.observe(name, kind, event.deleted)
            if event.deleted:
                if not await trio.to_thread.run_sync(os.path.exists, event.path):
                    self.index.discard(name, kind)
                continue
            await self.appeared(name, kind, now)

    async def _scan_new_directory(self, path: Path, now: float) -> None:
        """A directory created or moved in: its files may never get events of their own."""
        def walk() -> list[str]:
            found = []
            for dirpath, _, files in os.walk(path):
                found.extend(os.path.join(dirpath, f) for f in files)
                if len(found) > MAX_NEW_DIRECTORY_FILES:
                    break
            return found

        for file_path in await trio.to_thread.run_sync(walk):
            try:
                name, kind = parse_path(self.relative(file_path) or "")
            except SegmentNameError:
                continue
            await self.appeared(name, kind, now)

    async def appeared(self, name: SegmentName, kind: Kind, seen_at: float) -> None:
        """A final name appeared locally: index it and, if it is new here, announce it."""
        if not name.replicable:
            return
        path = name.format(kind)
        if kind is Kind.TOMBSTONE:
            if await trio.to_thread.run_sync(self.store.path_of(name, kind).exists):
                self.found_tombstone(name, seen_at)
            return
        if path in self.announced and self.index.has(name, kind):
            return  # a second event of the same file (not one back from quarantine)
        if self.ingest.came_from_peer(path):
            self.index.add(name, kind)
            return
        size = await trio.to_thread.run_sync(verified_size, self.store.path_of(name), name)
        if size is None:
            return  # still being written, or corrupt: its next event (or a rescan) retries
        if self.index.add(name, kind):
            self.metrics.indexed_segments.inc()
        if self.index.has(name, Kind.TOMBSTONE):
            return
        self.announced.add(path)
        self.announce(name, kind, seen_at, size)  # the pusher need not stat it again

    def found_tombstone(self, name: SegmentName, seen_at: float | None = None) -> None:
        """A tombstone that exists on disk (reported by the watcher, or found first by
        what serves and lists, `DiskTombstones`): indexed, and announced unless a peer
        sent it or it was announced already."""
        self.index.add(name, Kind.TOMBSTONE)
        path = name.tombstone_path
        if self.ingest.came_from_peer(path) or path in self.announced:
            return
        self.announced.add(path)
        self.announce(name, Kind.TOMBSTONE,
                      trio.current_time() if seen_at is None else seen_at, None)

    # ---- rescans ----

    def request_rescan(self, reason: str) -> None:
        self._rescan_reason = reason
        self._rescan_wanted.set()

    async def rescan_loop(self) -> None:
        """A rescan when the watcher lost events, and every `rescan_interval`."""
        while True:
            with trio.move_on_after(self.rescan_interval):
                await self._rescan_wanted.wait()
            reason = self._rescan_reason if self._rescan_wanted.is_set() else "periodic"
            self._rescan_wanted = trio.Event()
            self.metrics.watcher_rescans.labels(reason).inc()
            log.info("rescanning the archive (%s)", reason)
            if self.keeper is not None:
                await self.sweep()
            else:
                await self.rescan(announce_new=True)

    async def sweep(self) -> int:
        """The mtime sweep (periodic, and after lost watcher events): only the hour
        directories whose stamp moved since the index's listing are listed; what
        they hold and the index lacks is indexed and announced, what the index holds
        and the disk does not is dropped. Returns how many names were new."""
        assert self.keeper is not None
        listed, gone = await self.keeper.sweep()
        new: list[tuple[SegmentName, Kind]] = []
        vanished: list[tuple[SegmentName, Kind]] = []
        for (channel, quality, hour), names in listed.items():
            known = self.index.peek_names(channel, quality, hour)
            on_disk = set(names)
            base = f"{channel}/{quality}/{hour}/"
            new.extend(parse_path(base + f) for f in names if f not in known)
            vanished.extend(parse_path(base + f) for f in known if f not in on_disk)
            self.index.mark_unsaved((channel, quality, hour))
        for name, kind in vanished:  # gone from the listing: gone now too?
            if not await trio.to_thread.run_sync(self.store.path_of(name, kind).exists):
                self.index.discard(name, kind)
        for channel, quality, hour in gone:
            if not await trio.to_thread.run_sync(
                    self.store.hour_dir(channel, quality, hour).exists):
                self.index.drop_hour(channel, quality, hour)
        now = trio.current_time()
        for name, kind in new:
            await self.appeared(name, kind, now)
        self.metrics.indexed_segments.set(self.index.segment_count())
        return len(new)

    async def rescan(self, announce_new: bool, remove_temp: bool = False) -> int:
        """Full scan into a fresh index; announce what the watcher never reported.
        Returns how many names were new."""
        def scan():
            out = []
            for channel, quality, hour, names in self.store.scan(remove_temp=remove_temp):
                listing = classify_hour(channel, quality, hour, names, self.store.log_bad_name)
                out.append((channel, quality, hour,
                            listing.segments + listing.hidden + listing.tombstones))
            return out

        self.index.begin_rebuild()
        scanned = await trio.to_thread.run_sync(scan)
        new: list[tuple[SegmentName, Kind]] = []
        if announce_new:
            for channel, quality, hour, names in scanned:
                known = self.index.names(channel, quality, hour)
                for filename in names:
                    if filename not in known:
                        new.append(parse_path(f"{channel}/{quality}/{hour}/{filename}"))
        self.index.replace_all(scanned)
        self.metrics.indexed_segments.set(self.index.segment_count())
        now = trio.current_time()
        for name, kind in new:
            await self.appeared(name, kind, now)
        return len(new)
