"""The archive on disk: listings, hour digests, atomic verified writes, tombstones.

All methods are blocking file I/O; the trio side calls them through
`trio.to_thread.run_sync`. A segment becomes visible under its final name only
complete and hash-verified: temp file in the same directory, write loop, size and
SHA-256 check, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator

from protocol.digests import hour_digest
from protocol.legacy import NON_SEGMENT_QUALITIES
from protocol.errors import SegmentNameError
from protocol.hashing import SegmentHasher
from protocol.names import (
    SEGMENT_SUFFIX,
    TOMBSTONE_SUFFIX,
    Kind,
    SegmentName,
    format_hour,
    parse_filename,
    parse_hour,
    segment_filename_for,
    split_common_names,
    tombstone_filename_for,
    validate_component,
)
from protocol.selection import Candidate, Hole, best_segments

log = logging.getLogger(__name__)

TEMP_PREFIX = ".segsync-"
TEMP_SUFFIX = ".tmp"
READ_CHUNK = 256 * 1024
_MAX_LOGGED_BAD_NAMES = 10_000

WriteFn = Callable[[int, bytes | memoryview], int]
WritevFn = Callable[[int, list], int]
_IOV_MAX = 1024  # buffers one writev takes on Linux
# Most bytes per write call (rsync writes 256 KiB too). The page cache sizes its folios
# by the write: a 1 MiB write asks for 1 MiB folios, which the kernel carves out of
# large free blocks, memory that a VM has often handed back to its host (free page
# reporting) and that costs several times as much to fill as recently freed pages.
# Measured in bench/backfill_throughput.py: 1 MiB writes spent 1.8-2.0 s of system
# time per 600 MiB catch-up, 256 KiB writes 1.0-1.5 s.
MAX_WRITE = 256 * 1024


class WriteRejected(Exception):
    """An incoming segment that must not become visible; `reason` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Tombstoned(WriteRejected):
    def __init__(self, path: str) -> None:
        super().__init__("tombstoned", f"{path} is tombstoned here")


@dataclass
class HourListing:
    """One hour as found on disk, sorted file names."""

    segments: list[str] = field(default_factory=list)  # visible .ts
    tombstones: list[str] = field(default_factory=list)  # .tombstone
    hidden: list[str] = field(default_factory=list)  # .ts hidden by a tombstone

    @property
    def replicable(self) -> list[str]:
        return sorted(self.segments + self.tombstones)


def is_temp_file(filename: str) -> bool:
    return filename.startswith(TEMP_PREFIX) and filename.endswith(TEMP_SUFFIX)


def classify_hour(
    channel: str, quality: str, hour: str, filenames: Iterable[str],
    on_bad: Callable[[str, str], None] | None = None,
) -> HourListing:
    """Split raw file names of one hour directory into visible, tombstones, hidden.

    Temp-type names, dot-files and names that do not parse are left out.
    """
    common_segments, common_tombstones, others = split_common_names(
        channel, quality, hour, filenames)  # most names: one regex match each
    segments = set(common_segments)
    tombstones = set(common_tombstones)
    for filename in others:
        if filename.startswith("."):
            continue
        try:
            name, kind = parse_filename(channel, quality, hour, filename)
        except SegmentNameError as e:
            if on_bad is not None:
                on_bad(f"{channel}/{quality}/{hour}/{filename}", str(e))
            continue
        if not name.replicable:
            continue
        (segments if kind is Kind.SEGMENT else tombstones).add(filename)
    listing = HourListing(tombstones=sorted(tombstones))
    if not tombstones:
        listing.segments = sorted(segments)
        return listing
    for filename in sorted(segments):
        hidden = tombstone_filename_for(filename) in tombstones
        (listing.hidden if hidden else listing.segments).append(filename)
    return listing


def write_all(fd: int, data: bytes | memoryview, write: WriteFn = os.write) -> None:
    """Loop until every byte is written: `write` may accept fewer than offered."""
    view = memoryview(data)
    while view:
        n = write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


def writev_all(fd: int, chunks: Iterable[bytes | memoryview],
               writev: WritevFn = os.writev, max_write: int = MAX_WRITE) -> None:
    """Loop until every byte of every chunk is written, offering at most `max_write`
    bytes and IOV_MAX buffers per `writev`, which may write fewer bytes than offered."""
    views = deque(memoryview(c) for c in chunks if len(c))
    while views:
        offer: list[memoryview] = []
        room = max_write
        for view in views:
            if not room or len(offer) == _IOV_MAX:
                break
            offer.append(view[:room])
            room -= len(offer[-1])
        n = writev(fd, offer)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        while n:  # drop what was written from the front
            if n >= len(views[0]):
                n -= len(views.popleft())
            else:
                views[0] = views[0][n:]
                n = 0


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parents_to_sync(unsynced: Collection[Path], directory: Path,
                    root: Path) -> list[tuple[Path, Path]]:
    """(made, parent) for each directory on the way from `directory` up to `root`
    (exclusive) that was made and whose name is not durable yet (`unsynced`): its
    parent is the directory to fsync. Deepest first; [] when the chain is durable."""
    out = []
    d = directory
    while d != root and root in d.parents:
        if d in unsynced:
            out.append((d, d.parent))
        d = d.parent
    return out


class SegmentWriter:
    """Streams one incoming segment into a temp file; `commit` verifies and renames."""

    def __init__(
        self, store: "Store", name: SegmentName, expected_size: int | None,
        max_size: int, write: WriteFn = os.write,
    ) -> None:
        self.store = store
        self.name = name
        self.expected_size = expected_size
        self.max_size = max_size
        self._write = write
        # an injected `write` (a test's short or failing disk) serves as a writev that
        # writes part of the first buffer, which writev_all must handle anyway
        self._writev: WritevFn = os.writev if write is os.write else (
            lambda fd, buffers: write(fd, buffers[0]))
        self._hasher = SegmentHasher()
        self.final_path = store.path_of(name, Kind.SEGMENT)
        self.temp_path = self.final_path.parent / (
            f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        )
        # directories made for this write: an aborted write takes them away again, so a
        # refused upload leaves the archive exactly as it was
        self.made_dirs: list[Path] = []
        self._fd: int | None = None
        self.done = False
        store.begin_write()
        try:
            self.made_dirs = store.make_hour_dirs(name, sync=False)  # synced at commit
            self._fd = os.open(
                self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
            )
        except BaseException:
            self._finish(self.made_dirs)
            raise

    @property
    def size(self) -> int:
        return self._hasher.size

    def _check_room(self, more: int) -> None:
        limit = self.expected_size if self.expected_size is not None else self.max_size
        if self._hasher.size + more > limit:
            self.abort()
            raise WriteRejected(
                "too_large", f"{self.name.path}: more than {limit} bytes received"
            )

    def write(self, chunk: bytes | memoryview) -> None:
        if self._fd is None:
            raise RuntimeError("writer is closed")
        self._check_room(len(chunk))
        try:
            write_all(self._fd, chunk, self._write)
        except BaseException:
            self.abort()
            raise
        self._hasher.update(chunk)

    def write_many(self, chunks: list) -> None:
        """Write chunks that arrived one after the other with `writev`, MAX_WRITE bytes
        per call rather than one call per chunk, and hash them: each syscall releases
        and retakes the GIL, which costs more than a small write while the event loop
        is busy."""
        if self._fd is None:
            raise RuntimeError("writer is closed")
        self._check_room(sum(map(len, chunks)))
        try:
            writev_all(self._fd, chunks, self._writev)
        except BaseException:
            self.abort()
            raise
        for chunk in chunks:
            self._hasher.update(chunk)

    def verify(self) -> None:
        """WriteRejected (and the temp file removed) unless every byte is here and
        the bytes hash to the name."""
        try:
            if self.expected_size is not None and self._hasher.size != self.expected_size:
                raise WriteRejected(
                    "size_mismatch",
                    f"{self.name.path}: got {self._hasher.size} bytes, "
                    f"expected {self.expected_size}",
                )
            if self._hasher.digest() != self.name.hash:
                raise WriteRejected(
                    "hash_mismatch",
                    f"{self.name.path}: bytes hash to {self._hasher.text()}, "
                    f"not to the name's {self.name.hash_text}",
                )
        except BaseException:
            self.abort()
            raise

    def commit(self, sync_dir: bool = True) -> str:
        """Verify, fsync, rename into place. Returns 'stored' or 'have'.

        `sync_dir=False` leaves the directory's fsync (which makes the rename itself
        durable) to the caller, who can then sync a directory once for many files
        (`Store.sync_dirs`). Until then a crash can lose the rename, never expose a
        partial file: the data was synced before the name appeared.

        A brand-new hour directory (and channel, quality) made for this write gets its
        name made durable here, after the file's fsync, not when it was made: that
        fsync has committed the mkdirs with it (one journal commit, not two on ext4),
        so the first segment of every hour costs no more than the next ones."""
        try:
            self.verify()
            assert self._fd is not None
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self.store.sync_new_dirs(self.final_path.parent)
            if self.store.has_tombstone(self.name):
                raise Tombstoned(self.name.path)
            if self.final_path.exists():
                self._discard()
                self._finish(self.made_dirs)
                return "have"
            os.rename(self.temp_path, self.final_path)
            self._finish([])
            if sync_dir:
                fsync_dir(self.final_path.parent)
            return "stored"
        except BaseException:
            self.abort()
            raise

    def _discard(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass

    def abort(self) -> None:
        """Remove the temp file, and the directories made for it if they stayed empty;
        nothing becomes visible. Safe to call twice."""
        if not self.done:
            try:
                self._discard()
            finally:
                self._finish(self.made_dirs)

    def _finish(self, unused_dirs: list[Path]) -> None:
        """The write is over (stored, here already, or given up): it no longer holds
        the store's directories; `unused_dirs` may go."""
        self.done = True
        self.store.end_write(unused_dirs)

    def __enter__(self) -> "SegmentWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


class Store:
    """One node's archive directory."""

    def __init__(self, root: str | os.PathLike, max_segment_bytes: int = 256 * 1024 * 1024,
                 not_segments: Iterable[str] = ()):
        self.root = Path(root)
        self.max_segment_bytes = max_segment_bytes
        # top-level directories that hold no segments (--extras): never scanned here
        self.not_segments = frozenset(not_segments)
        self._bad_logged: set[str] = set()
        # writes in progress (from worker threads) and the empty directories that
        # ended ones left to remove; see end_write
        self._writes_lock = threading.Lock()
        self._writes = 0
        self._unused_dirs: set[Path] = set()
        # directories made by writes in progress whose names are not durable yet: the
        # first write to commit in them fsyncs their parents (`sync_new_dirs`)
        self._unsynced_dirs: set[Path] = set()

    # ---- paths ----

    def hour_dir(self, channel: str, quality: str, hour: str) -> Path:
        validate_component(channel, "channel")
        validate_component(quality, "quality")
        parse_hour(hour)
        return self.root / channel / quality / hour

    def path_of(self, name: SegmentName, kind: Kind = Kind.SEGMENT) -> Path:
        return self.root / name.format(kind)

    def ensure_hour_dir(self, name: SegmentName) -> Path:
        self.make_hour_dirs(name)
        return self.root / name.hour_path

    def make_hour_dirs(self, name: SegmentName, sync: bool = True) -> list[Path]:
        """Create CHANNEL/QUALITY/HOUR as needed; returns the directories it made.
        Called by a write in progress (`begin_write`). `sync`: their names are made
        durable now; else by the write's commit (`sync_new_dirs`), before it ends."""
        path = self.root / name.hour_path
        made: list[Path] = []
        if not path.is_dir():
            try:
                for d in (path.parent.parent, path.parent, path):
                    try:
                        d.mkdir()
                        made.append(d)
                    except FileExistsError:
                        pass
            except OSError:  # e.g. no space: leave no half-made tree behind (this
                with self._writes_lock:  # write's end_write removes them)
                    self._unused_dirs.update(made)
                raise
            with self._writes_lock:
                self._unsynced_dirs.update(made)
        if sync:
            self.sync_new_dirs(path)
        return made

    def sync_new_dirs(self, directory: Path) -> None:
        """fsync the parent of each directory on `directory`'s chain that a write
        made and whose name is not durable yet (whichever write made it: one that
        found a directory another write just made must not acknowledge a file whose
        directory a crash could lose)."""
        with self._writes_lock:
            pending = parents_to_sync(self._unsynced_dirs, directory, self.root)
        for made, parent in pending:
            fsync_dir(parent)
            with self._writes_lock:
                self._unsynced_dirs.discard(made)

    def begin_write(self) -> None:
        """A write (a segment's temp file, a tombstone) is about to make its hour
        directory, or find it, and create its file there."""
        with self._writes_lock:
            self._writes += 1

    def end_write(self, unused_dirs: Iterable[Path] = ()) -> None:
        """A write ended; `unused_dirs` are directories it made and no longer needs.
        They are removed (if empty) only once no write is in progress: another one may
        have found such a directory and be about to create its file in it."""
        with self._writes_lock:
            self._writes -= 1
            self._unused_dirs.update(unused_dirs)
            if self._writes == 0:
                # every write that committed synced its directories before it ended:
                # what is left was made by writes that stored nothing
                self._unsynced_dirs.clear()
                if self._unused_dirs:
                    self.remove_empty_dirs(list(self._unused_dirs))
                    self._unused_dirs.clear()

    def remove_empty_dirs(self, dirs: list[Path]) -> None:
        """Remove directories (deepest first) that are still empty; others stay."""
        for d in sorted(set(dirs), key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:  # not empty (another write, a tombstone), or gone
                pass

    # ---- listings ----

    def _subdirs(self, path: Path, check: Callable[[str], object]) -> list[str]:
        try:
            entries = list(os.scandir(path))
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                check(entry.name)
            except SegmentNameError as e:
                self.log_bad_name(str(path / entry.name), str(e))
                continue
            out.append(entry.name)
        return sorted(out)

    def channels(self) -> list[str]:
        return [c for c in self._subdirs(self.root, lambda n: validate_component(n, "channel"))
                if c not in self.not_segments]

    def qualities(self, channel: str) -> list[str]:
        """Segment qualities: wubloader's chat archive (`chat`) is not one."""
        validate_component(channel, "channel")
        return [q for q in self._subdirs(self.root / channel,
                                         lambda n: validate_component(n, "quality"))
                if q not in NON_SEGMENT_QUALITIES]

    def hours(self, channel: str, quality: str) -> list[str]:
        validate_component(channel, "channel")
        validate_component(quality, "quality")
        return self._subdirs(self.root / channel / quality, parse_hour)

    def pairs(self) -> list[tuple[str, str]]:
        return [(c, q) for c in self.channels() for q in self.qualities(c)]

    def raw_filenames(self, channel: str, quality: str, hour: str) -> list[str]:
        try:
            return os.listdir(self.hour_dir(channel, quality, hour))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list_hour(self, channel: str, quality: str, hour: str) -> HourListing:
        return classify_hour(
            channel, quality, hour, self.raw_filenames(channel, quality, hour), self.log_bad_name
        )

    def hour_digest(self, channel: str, quality: str, hour: str) -> bytes:
        return hour_digest(self.list_hour(channel, quality, hour).replicable)

    def log_bad_name(self, path: str, why: str) -> None:
        """Warn about a name that does not parse, once per path (bounded memory)."""
        if path in self._bad_logged:
            return
        if len(self._bad_logged) < _MAX_LOGGED_BAD_NAMES:
            self._bad_logged.add(path)
        log.warning("ignoring %s: %s", path, why)

    def scan(self, remove_temp: bool = False) -> Iterator[tuple[str, str, str, list[str]]]:
        """Every hour directory with its raw file names; optionally removes stale temp files."""
        for channel, quality in self.pairs():
            for hour in self.hours(channel, quality):
                names = self.raw_filenames(channel, quality, hour)
                if remove_temp:
                    kept = []
                    for n in names:
                        if is_temp_file(n):
                            self._remove_temp(self.root / channel / quality / hour / n)
                        else:
                            kept.append(n)
                    names = kept
                yield channel, quality, hour, names

    def _remove_temp(self, path: Path) -> None:
        try:
            path.unlink()
            log.info("removed temp file left by a crash: %s", path)
        except FileNotFoundError:
            pass

    # ---- segments and tombstones ----

    def has_tombstone(self, name: SegmentName) -> bool:
        return self.path_of(name, Kind.TOMBSTONE).exists()

    def has_segment(self, name: SegmentName) -> bool:
        return self.path_of(name, Kind.SEGMENT).exists()

    def is_visible(self, name: SegmentName) -> bool:
        return name.replicable and self.has_segment(name) and not self.has_tombstone(name)

    def segment_size(self, name: SegmentName) -> int:
        return self.path_of(name).stat().st_size

    def sync_dirs(self, dirs: Iterable[Path]) -> None:
        """fsync each directory: the renames made into it become durable."""
        for d in sorted(set(dirs)):
            fsync_dir(d)

    def open_writer(
        self, name: SegmentName, expected_size: int | None = None, write: WriteFn = os.write
    ) -> SegmentWriter:
        if not name.replicable:
            raise WriteRejected("temp", f"{name.path}: temp segments are never replicated")
        if expected_size is not None and expected_size > self.max_segment_bytes:
            raise WriteRejected(
                "too_large", f"{name.path}: {expected_size} bytes exceeds the limit"
            )
        if self.has_tombstone(name):
            raise Tombstoned(name.path)
        return SegmentWriter(self, name, expected_size, self.max_segment_bytes, write)

    def create_tombstone(self, name: SegmentName) -> bool:
        """Create NAME.tombstone (and its hour directory). False if it already existed."""
        path = self.path_of(name, Kind.TOMBSTONE)
        self.begin_write()
        try:
            self.ensure_hour_dir(name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        finally:
            self.end_write()
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
        return True

    def open_segment(self, name: SegmentName):
        """Open a visible segment for reading (binary); FileNotFoundError otherwise."""
        if not name.replicable or self.has_tombstone(name):
            raise FileNotFoundError(name.path)
        return open(self.path_of(name), "rb")

    # ---- consumers ----

    def best_segments(
        self, channel: str, quality: str, start: dt.datetime, end: dt.datetime
    ) -> list[Candidate | Hole]:
        """The versions a restream or cut would use over [start, end), holes marked."""
        candidates = []
        hour = start.astimezone(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
        # a segment that started in the previous hour may still cover `start`
        hour -= dt.timedelta(hours=1)
        while hour < end:
            hour_text = format_hour(hour)
            listing = self.list_hour(channel, quality, hour_text)
            for filename in listing.segments:
                name, _ = parse_filename(channel, quality, hour_text, filename)
                try:
                    size = self.segment_size(name)
                except FileNotFoundError:
                    continue
                candidates.append(Candidate(name, size))
            hour += dt.timedelta(hours=1)
        return best_segments(candidates, start, end)


__all__ = [
    "HourListing", "SegmentWriter", "Store", "Tombstoned", "WriteRejected",
    "classify_hour", "is_temp_file", "write_all", "segment_filename_for",
    "SEGMENT_SUFFIX", "TOMBSTONE_SUFFIX",
]
