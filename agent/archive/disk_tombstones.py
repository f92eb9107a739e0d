"""Tombstones as they are on disk now, for what a node serves and lists.

An operator's `touch NAME.tombstone` hides NAME.ts at once; the index learns of the
file only when the watcher reports it. Serving (a segment, a batch fetch, the first
byte of a push) and listing an hour must not wait for that:

- serving stats NAME.tombstone first, in the worker thread that opens the file;
- a listing stats the hour directory and reads it again only when its stamp moved
  since the last read (`protocol.tombstone_freshness`): one `stat` for an hour that
  did not change, one directory read for one that did.

A tombstone found so is recorded then and there (`found`: the index, and the push a
watcher event would have started), so the hour's digest and its listing agree. The
in-sync round (digests only) never comes here: it reads no directory.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import IO, Callable

import trio

from protocol.errors import SegmentNameError
from protocol.names import Kind, SegmentName, parse_filename
from protocol.tombstone_freshness import (
    DirStamp,
    must_read,
    stamp_to_remember,
    unindexed_tombstones,
)

from .index import ArchiveIndex
from .store import Store

MAX_REMEMBERED_HOURS = 4096  # hour stamps kept (~200 bytes each); others are read again

HourKey = tuple[str, str, str]


class DiskTombstones:
    """Checks against the tombstones on disk. `found(name)` records a tombstone the
    index did not have (default: index it)."""

    def __init__(self, store: Store, index: ArchiveIndex,
                 found: Callable[[SegmentName], None] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns,
                 max_hours: int = MAX_REMEMBERED_HOURS) -> None:
        self.store = store
        self.index = index
        self.found = found or (lambda name: index.add(name, Kind.TOMBSTONE))
        self.clock_ns = clock_ns  # the wall clock: what a local file system stamps with
        self.max_hours = max_hours
        # per hour: the directory's stamp when its tombstones were last read (and
        # recorded); an hour whose stamp is still that has no tombstone the index lacks
        self._stamps: OrderedDict[HourKey, DirStamp] = OrderedDict()

    # ---- one segment ----

    def on_disk(self, name: SegmentName) -> bool:
        """Whether NAME.tombstone exists: one `stat`. Blocking: a worker thread's."""
        return self.store.has_tombstone(name)

    def record(self, name: SegmentName) -> None:
        """A tombstone seen on disk (trio side): recorded now, not when the watcher
        gets to it. Idempotent."""
        self.found(name)

    def open_segment(self, name: SegmentName) -> IO[bytes] | None:
        """Open a segment for serving (in a worker thread): None when it is not served,
        absent or tombstoned (then recorded, from the thread). An open file keeps its
        bytes even if the name goes away."""
        if not name.replicable:
            return None
        if self.on_disk(name):
            trio.from_thread.run_sync(self.record, name)
            return None
        try:
            return open(self.store.path_of(name), "rb")
        except (FileNotFoundError, NotADirectoryError):
            return None

    # ---- one hour ----

    async def check_hour(self, channel: str, quality: str, hour: str) -> None:
        """Before an hour is listed: every tombstone in its directory is in the index
        (recorded now if it was not), so the listing hides what they hide."""
        key = (channel, quality, hour)
        remembered = self._stamps.get(key)
        directory = self.store.hour_dir(channel, quality, hour)

        def look() -> tuple[DirStamp | None, list[str] | None, int]:
            try:
                st = os.stat(directory)
            except (FileNotFoundError, NotADirectoryError):
                return None, None, 0
            stamp = DirStamp(st.st_mtime_ns, st.st_ctime_ns)
            if not must_read(remembered, stamp):
                return stamp, None, 0
            read_at = self.clock_ns()
            try:
                return stamp, os.listdir(directory), read_at
            except (FileNotFoundError, NotADirectoryError):
                return None, None, 0

        stamp, filenames, read_at = await trio.to_thread.run_sync(look)
        if stamp is None:  # no directory: no tombstone in it
            self._stamps.pop(key, None)
            return
        if filenames is None:  # unchanged since its last read
            self._stamps.move_to_end(key)
            return
        for filename in unindexed_tombstones(filenames, self.index.names(*key)):
            try:
                name, _ = parse_filename(channel, quality, hour, filename)
            except SegmentNameError as e:
                self.store.log_bad_name(f"{channel}/{quality}/{hour}/{filename}", str(e))
                continue
            if name.replicable:
                self.record(name)
        kept = stamp_to_remember(stamp, read_at)
        if kept is None:  # read racily: read again next time
            self._stamps.pop(key, None)
            return
        self._stamps[key] = kept
        self._stamps.move_to_end(key)
        while len(self._stamps) > self.max_hours:
            self._stamps.popitem(last=False)
