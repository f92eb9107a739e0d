"""watchdog's observer thread, bridged into trio through a bounded hand-off.

The watchdog thread never blocks: it appends to a bounded buffer and, at most once
per batch, wakes the trio side. When the buffer is full, or inotify reports that the
kernel dropped events, the bridge flags "rescan" instead of losing the work.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import trio
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.inotify import InotifyWatchGroup
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

log = logging.getLogger(__name__)

# watchdog 7 warns each time it re-registers the inotify callback of a directory it
# already watches (every new hour directory does that): harmless, and noise on stderr.
warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning,
                        module=r"watchdog\.")

# watchdog holds each IN_MOVED_FROM for `delay` (0.5 s) to pair it with its
# IN_MOVED_TO, and its queue reader can begin that wait just before the pair forms:
# it then sleeps the whole 0.5 s, holding back every later event of the tree, so a
# segment renamed into place reached the pusher half a second late now and then
# (1 rename in ~2000 on an idle machine, more under load; bench/push_latency.py).
# The handler takes a move as "source gone, destination appeared", paired or not,
# so never wait: an unpaired half comes out at once as a delete or a create.
InotifyMoveEventGrouper.delay = 0

# watchdog registers a recursive watch with os.walk, which reads every directory in
# full: every file name of the archive, at each start (seconds at millions of
# segments, in the thread that starts the observer). An hour directory holds files
# only, so it is watched without being read; everything else as watchdog does it.
_HOUR_DIR = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}\Z")


def _is_hour_dir(path: bytes | str) -> bool:
    return _HOUR_DIR.match(os.fsencode(os.path.basename(path))) is not None


def _add_all_callbacks(self, path: bytes) -> None:
    is_dir = os.path.isdir(path)
    self._add_callback(path)
    if not (is_dir and self.is_recursive) or _is_hour_dir(path):
        return
    pending = [path]
    while pending:
        try:
            with os.scandir(pending.pop()) as it:
                subdirs = [e.path for e in it
                           if e.is_dir(follow_symlinks=self.follow_symlink)
                           and (self.follow_symlink or not e.is_symlink())]
        except OSError:  # gone or unreadable meanwhile: as os.walk, skipped
            continue
        for sub in subdirs:
            self._add_callback(sub)
            if not _is_hour_dir(sub):
                pending.append(sub)


if hasattr(InotifyWatchGroup, "_add_all_callbacks"):
    InotifyWatchGroup._add_all_callbacks = _add_all_callbacks

# watchdog logs (and then swallows) inotify's IN_Q_OVERFLOW under this logger.
INOTIFY_LOGGER = "watchdog.observers.inotify_c"


@dataclass(frozen=True, slots=True)
class FileEvent:
    """A path that may have become (or stopped being) a final file."""

    path: str
    deleted: bool = False
    directory: bool = False


@dataclass(frozen=True, slots=True)
class Batch:
    events: list[FileEvent]
    rescan: str | None  # reason, when events were lost


class WatchBridge:
    """Thread-safe bounded hand-off from the watchdog thread to one trio task."""

    def __init__(self, token: trio.lowlevel.TrioToken, max_events: int = 10_000) -> None:
        self._token = token
        self._max = max_events
        self._lock = threading.Lock()
        self._events: collections.deque[FileEvent] = collections.deque()
        self._rescan: str | None = None
        self._wake_pending = False
        self._ready = trio.Event()

    # -- thread side: never blocks --
    def put(self, event: FileEvent) -> None:
        with self._lock:
            if len(self._events) >= self._max:
                self._events.clear()  # everything will be found by the rescan
                self._rescan = "overflow"
            else:
                self._events.append(event)
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()

    def overflow(self, reason: str = "inotify_overflow") -> None:
        with self._lock:
            self._events.clear()
            self._rescan = reason
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()

    def _wake(self) -> None:
        try:
            self._token.run_sync_soon(self._ready.set)
        except trio.RunFinishedError:
            pass

    # -- trio side --
    async def get(self) -> Batch:
        await self._ready.wait()
        with self._lock:
            events = list(self._events)
            self._events.clear()
            rescan, self._rescan = self._rescan, None
            self._wake_pending = False
            self._ready = trio.Event()
        return Batch(events, rescan)


class _Handler(FileSystemEventHandler):
    # The only events `on_any_event` uses. Given to `schedule`, they also narrow the
    # inotify mask: no thread wake-ups (and GIL hand-offs) for every open, read-close
    # and write() of a segment being pushed, served or received.
    EVENTS = [FileClosedEvent, FileCreatedEvent, FileMovedEvent, FileDeletedEvent,
              DirMovedEvent, DirCreatedEvent]

    def __init__(self, bridge: WatchBridge) -> None:
        self.bridge = bridge

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        if isinstance(event, (FileClosedEvent, FileCreatedEvent)):
            self.bridge.put(FileEvent(src))
        elif isinstance(event, FileMovedEvent):
            self.bridge.put(FileEvent(src, deleted=True))
            self.bridge.put(FileEvent(os.fsdecode(event.dest_path)))
        elif isinstance(event, FileDeletedEvent):
            self.bridge.put(FileEvent(src, deleted=True))
        elif isinstance(event, DirMovedEvent):
            self.bridge.put(FileEvent(os.fsdecode(event.dest_path), directory=True))
        elif isinstance(event, DirCreatedEvent):
            self.bridge.put(FileEvent(src, directory=True))


class _OverflowSpotter(logging.Filter):
    """Turns watchdog's 'queue overflowed' log line into a rescan request.

    The line is a WARNING; a logger set to ERROR would drop it before any filter runs,
    so `run` opens the logger to WARNING and this filter keeps the configured level
    for what gets printed (`show_from`).
    """

    def __init__(self, bridge: WatchBridge, show_from: int = logging.NOTSET) -> None:
        super().__init__()
        self.bridge = bridge
        self.show_from = show_from

    def filter(self, record: logging.LogRecord) -> bool:
        if "overflow" in record.getMessage().lower():
            self.bridge.overflow()
        return record.levelno >= self.show_from


class ArchiveWatcher:
    """Runs the observer for the lifetime of `run`; stops and joins it on exit."""

    def __init__(self, root: Path, max_events: int = 10_000) -> None:
        self.root = root
        self.max_events = max_events
        self.bridge: WatchBridge | None = None

    async def run(self, handle_batch, task_status=trio.TASK_STATUS_IGNORED) -> None:
        bridge = self.bridge = WatchBridge(trio.lowlevel.current_trio_token(), self.max_events)
        observer = Observer()
        observer.schedule(_Handler(bridge), str(self.root), recursive=True,
                          event_filter=_Handler.EVENTS)
        inotify_log = logging.getLogger(INOTIFY_LOGGER)
        saved_level = inotify_log.level
        spotter = _OverflowSpotter(bridge, inotify_log.getEffectiveLevel())
        # pinned here, so raising the root level later cannot silence the line either
        inotify_log.setLevel(min(logging.WARNING, max(1, inotify_log.getEffectiveLevel())))
        inotify_log.addFilter(spotter)
        # in a worker thread: a watch per directory of the archive (20-250 us each:
        # the kernel visits the directory's cached entries) is a while at thousands
        # of hours, and the trio side serves meanwhile
        await trio.to_thread.run_sync(observer.start)
        try:
            task_status.started()
            while True:
                batch = await bridge.get()
                await handle_batch(batch)
        finally:
            inotify_log.removeFilter(spotter)
            inotify_log.setLevel(saved_level)
            observer.stop()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(observer.join, 5)
