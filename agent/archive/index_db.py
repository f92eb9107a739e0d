"""The persistent index's file: ROOT/.segsync/index.sqlite3 (stdlib sqlite3, WAL).

One row per (channel, quality, hour) directory in `hours`: the stamp of the listing
its names were checked against (or none), the hour digest, counts and coverage spans;
the names in `hour_names`, one blob with its CRC-32 per hour (SQLite itself checks no
page, a damaged blob fails its CRC). Two tables, not a last column: a row's first
~500 bytes share its leaf page with its blob's overflow pages, so the 2,778 rows of a
5M-segment archive lay on ~400 pages scattered over its 340 MB, and a warm start
whose index had left the page cache read them in 250-330 ms; apart, its rows fill
~110 pages, read in ~50 ms (bench/scale.py's node B, issue 20). All
writes are single transactions: a kill -9 leaves the rows of the last commit, each
one either a listing that its stamp vouches for or marked unverified (see
protocol/index/listing_stamp.py for when a warm start trusts a row).

Blocking I/O: the trio side calls it through worker threads, except the load of
one cold hour's names (one indexed row, ~1 ms). Two connections: the writer's
(worker threads, one at a time) and the reader's (cold loads), so a long write
never holds up a load (WAL lets them run side by side).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from protocol.coverage import HourSpans
from protocol.index.schema import (
    APPLICATION_ID, SCHEMA_VERSION, HourCounts, IndexFormatError, decode_names,
    decode_spans, encode_names, encode_spans, index_usable,
)
from protocol.index.listing_stamp import DirStamp, ListingStamp

log = logging.getLogger(__name__)

STATE_DIR = ".segsync"
INDEX_FILE = "index.sqlite3"
CLOCK_FILE = "clock"

HourKey = tuple[str, str, str]  # channel, quality, hour

_SCHEMA = """
CREATE TABLE hours (
    channel TEXT NOT NULL, quality TEXT NOT NULL, hour TEXT NOT NULL,
    mtime_ns INTEGER, ctime_ns INTEGER, listed_at_ns INTEGER,
    digest BLOB NOT NULL,
    segments INTEGER NOT NULL, hidden INTEGER NOT NULL, tombstones INTEGER NOT NULL,
    spans BLOB,
    PRIMARY KEY (channel, quality, hour)
);
CREATE TABLE hour_names (
    channel TEXT NOT NULL, quality TEXT NOT NULL, hour TEXT NOT NULL,
    names_crc INTEGER NOT NULL,
    names BLOB NOT NULL,
    PRIMARY KEY (channel, quality, hour)
);
"""


class IndexUnavailable(Exception):
    """ROOT/.segsync/ cannot hold an index (read-only, full, not a directory)."""


class IndexCorrupt(Exception):
    """The file is damaged: it is set aside and the index rebuilt."""


class IndexWriteFailed(Exception):
    """A write did not commit (disk full, read-only now): the rows stay as they were."""


@dataclass(slots=True)
class HourRow:
    """One hour as stored. `listing` None: the names were not checked against a listing
    of the directory (a warm start lists it again). `names` only when written or loaded."""

    key: HourKey
    listing: ListingStamp | None
    digest: bytes
    counts: HourCounts
    spans: HourSpans | None = None
    names: list[str] | None = None


def _is_full(e: sqlite3.Error) -> bool:
    text = str(e).lower()
    return "full" in text or "readonly" in text or "read-only" in text or "disk i/o" in text


class IndexDb:
    def __init__(self, root: str | os.PathLike) -> None:
        self.dir = Path(root) / STATE_DIR
        self.path = self.dir / INDEX_FILE
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()

    # ---- opening ----

    def open(self) -> str | None:
        """Open (or create) the file. Returns None when its rows may be used, else why
        they may not (then the table is empty and a full scan fills it). Raises
        IndexUnavailable when the directory cannot hold an index at all."""
        try:
            self.dir.mkdir(exist_ok=True)
        except OSError as e:
            raise IndexUnavailable(f"cannot create {self.dir}: {e}") from None
        existed = self.path.exists()
        reason: str | None = None if existed else "no index yet"
        try:
            conn = self._connect()
            if existed:
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                reason = index_usable(app_id, version)
                if reason is None:
                    conn.execute("SELECT count(*) FROM hours").fetchone()
                    conn.execute("SELECT 1 FROM hour_names LIMIT 1").fetchone()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and _is_full(e):
                raise IndexUnavailable(f"{self.path}: {e}") from None
            reason = f"unreadable ({e})"
            conn = None
        if reason is not None:
            if conn is not None:
                conn.close()
            conn = self._recreate()
        self._writer = conn
        try:
            self._reader = self._connect()
        except sqlite3.Error as e:
            raise IndexUnavailable(f"{self.path}: {e}") from None
        return reason

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=10)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise IndexUnavailable(f"{self.path}: WAL journal refused ({mode})")
            # WAL with synchronous=NORMAL: a process crash loses nothing committed, a
            # power cut at most the last commits; the file is never damaged either way
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _recreate(self) -> sqlite3.Connection:
        """A fresh, empty file in place of a missing, damaged or foreign one."""
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass
            except OSError as e:
                raise IndexUnavailable(f"cannot replace {self.path}: {e}") from None
        try:
            conn = self._connect()
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return conn
        except sqlite3.Error as e:
            raise IndexUnavailable(f"cannot create {self.path}: {e}") from None

    def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
        self._reader = self._writer = None

    # ---- reading ----

    def summaries(self) -> list[HourRow]:
        """Every row without its names. A row that cannot be ours is left out (its
        hour is then listed again); a damaged file raises IndexCorrupt."""
        out = []
        try:
            with self._read_lock:
                assert self._reader is not None
                rows = self._reader.execute(
                    "SELECT channel, quality, hour, mtime_ns, ctime_ns, listed_at_ns, digest,"
                    " segments, hidden, tombstones, spans FROM hours").fetchall()
        except sqlite3.DatabaseError as e:
            raise IndexCorrupt(str(e)) from None
        for (channel, quality, hour, mtime, ctime, listed_at, digest, segments, hidden,
             tombstones, spans) in rows:
            try:
                if not (isinstance(digest, bytes) and len(digest) == 32):
                    raise IndexFormatError("digest")
                counts = HourCounts(int(segments), int(hidden), int(tombstones))
                if min(counts.segments, counts.hidden, counts.tombstones) < 0:
                    raise IndexFormatError("counts")
                listing = (ListingStamp(DirStamp(int(mtime), int(ctime)), int(listed_at))
                           if None not in (mtime, ctime, listed_at) else None)
                out.append(HourRow((str(channel), str(quality), str(hour)), listing, digest,
                                   counts, decode_spans(spans) if spans else None))
            except (IndexFormatError, TypeError, ValueError):
                log.warning("index: row %s/%s/%s unreadable: its hour is listed again",
                            channel, quality, hour)
        return out

    def names(self, key: HourKey) -> list[str] | None:
        """One hour's names (None: no such row). IndexCorrupt when unreadable."""
        try:
            with self._read_lock:
                assert self._reader is not None
                row = self._reader.execute(
                    "SELECT names_crc, names FROM hour_names"
                    " WHERE channel=? AND quality=? AND hour=?",
                    key).fetchone()
        except sqlite3.DatabaseError as e:
            raise IndexCorrupt(str(e)) from None
        if row is None:
            return None
        crc, blob = row
        if not isinstance(blob, bytes) or zlib.crc32(blob) != crc:
            raise IndexCorrupt(f"{'/'.join(key)}: names do not match their checksum")
        try:
            return decode_names(blob)
        except (IndexFormatError, TypeError) as e:
            raise IndexCorrupt(f"{'/'.join(key)}: {e}") from None

    # ---- writing ----

    def write(self, rows: Iterable[HourRow] = (), deleted: Iterable[HourKey] = (),
              spans: Iterable[tuple[HourKey, HourSpans]] = (), clear: bool = False) -> None:
        """One transaction: `clear` empties the table first; rows (with names) replace
        theirs; deleted rows go; `spans` updates only the spans of existing rows."""
        with self._write_lock:
            conn = self._writer
            assert conn is not None
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if clear:
                        conn.execute("DELETE FROM hours")
                        conn.execute("DELETE FROM hour_names")
                    rows = list(rows)
                    # the batch's rows first: they keep to fewer pages than if each
                    # came between two blobs
                    conn.executemany(
                        "INSERT OR REPLACE INTO hours VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (_row_values(r) for r in rows))
                    conn.executemany(
                        "INSERT OR REPLACE INTO hour_names VALUES (?,?,?,?,?)",
                        (_names_values(r) for r in rows))
                    deleted = list(deleted)
                    for table in ("hours", "hour_names"):
                        conn.executemany(f"DELETE FROM {table} WHERE channel=? AND quality=?"
                                         " AND hour=?", deleted)
                    conn.executemany(
                        "UPDATE hours SET spans=? WHERE channel=? AND quality=? AND hour=?",
                        ((encode_spans(s), *k) for k, s in spans))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # SQLITE_FULL may have rolled it back
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                if _is_full(e):
                    raise IndexWriteFailed(str(e)) from None
                raise IndexCorrupt(str(e)) from None
            except sqlite3.DatabaseError as e:
                raise IndexCorrupt(str(e)) from None

    def checkpoint(self) -> None:
        """Fold the WAL into the file (at shutdown: the next start reads one file)."""
        with self._write_lock:
            if self._writer is not None:
                try:
                    self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass

    # ---- the file system's clock, and the size on disk ----

    def fs_now(self) -> int:
        """Now on the clock that stamps the archive's directories (a network file
        system's server clock): the mtime of a file touched now. Falls back to this
        host's clock when the file cannot be touched."""
        path = self.dir / CLOCK_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.utime(fd)
                return os.fstat(fd).st_mtime_ns
            finally:
                os.close(fd)
        except OSError:
            return time.time_ns()

    def size_on_disk(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except OSError:
                pass
        return total


def _row_values(row: HourRow) -> tuple:
    stamp = row.listing
    return (*row.key,
            stamp.stamp.mtime_ns if stamp else None, stamp.stamp.ctime_ns if stamp else None,
            stamp.listed_at_ns if stamp else None,
            row.digest, row.counts.segments, row.counts.hidden, row.counts.tombstones,
            encode_spans(row.spans) if row.spans is not None else None)


def _names_values(row: HourRow) -> tuple:
    assert row.names is not None
    blob = encode_names(row.names)  # with a CRC: SQLite checks no page of it
    return (*row.key, zlib.crc32(blob), blob)
