"""Ingest: the one way a segment or tombstone from a peer enters the archive.

The server (pushes) and the backfiller (pulls) both call it. It writes through the
store (verified, atomic), indexes what it stored, counts it, and remembers what came
from peers (the echo guard), so the watcher's event for that file is not pushed back.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator

import trio

from protocol.names import Kind, SegmentName
from protocol.replication import offer_status

from ..telemetry.metrics import Metrics
from .index import ArchiveIndex
from .recent import RecentSet
from .store import SegmentWriter, Store, WriteRejected

log = logging.getLogger(__name__)

UPLOAD_BUFFER = 1024 * 1024  # bytes gathered before a thread hop writes them
ECHO_MEMORY = 100_000  # paths remembered as received from peers


class Ingest:
    def __init__(self, store: Store, index: ArchiveIndex, metrics: Metrics) -> None:
        self.store = store
        self.index = index
        self.metrics = metrics
        self.received = RecentSet(ECHO_MEMORY)  # paths peers sent us: never pushed back

    def came_from_peer(self, path: str) -> bool:
        return path in self.received

    async def offer_status(self, name: SegmentName) -> str:
        """What a peer offering `name` is told: want, have or tombstoned."""
        def check() -> str:
            return offer_status(self.store.has_segment(name), self.store.has_tombstone(name))

        return await trio.to_thread.run_sync(check)

    async def accept_segment(
        self, name: SegmentName, size: int | None, chunks: AsyncIterator[bytes], source: str,
        sync_dir: bool = True,
    ) -> str:
        """Stream a segment from a peer into the store: verified, atomic, indexed.
        Returns stored, have or tombstoned; raises WriteRejected (bad bytes) or
        OSError (storage). `sync_dir=False`: the caller fsyncs the hour directory
        later (see `SegmentWriter.commit`), once for many segments.

        The last batch is written, verified and committed (fsync, rename) in one
        thread hop: one segment by itself (a push, a heal) has no next one whose
        stream its fsync could overlap, and each hop is a wake-up that waits for a
        CPU on a busy node. A catch-up uses `receive_segment` and commits apart."""
        receiver = SegmentReceiver(self, name, size, source)

        def write(batch: list, last: bool) -> str | None:
            status = receiver.write_batch(batch, last)
            if last and status is None:
                assert receiver.writer is not None
                return receiver.writer.commit(sync_dir)
            return status

        # before the rename (in the last hop): the watcher's event for it is an echo
        echo = name.path not in self.received
        self.received.add(name.path)
        try:
            status = await self._write_batches(chunks, write)
        except BaseException as e:
            if echo:
                self.received.discard(name.path)
            receiver.fail(e)
            raise
        assert status is not None
        if status == "stored":
            self.stored(name, receiver.writer.size, source)  # type: ignore[union-attr]
        self.metrics.received.labels("segment", status).inc()
        return status

    def stored(self, name: SegmentName, size: int, source: str) -> None:
        """A segment from a peer became visible: indexed and counted."""
        self.index.add(name, Kind.SEGMENT)
        self.metrics.indexed_segments.inc()
        self.metrics.bytes.labels("received" if source == "push" else "pulled").inc(size)

    def receiver(self, name: SegmentName, size: int | None, source: str
                 ) -> "SegmentReceiver":
        """A segment to write from a worker thread (a threaded fetch)."""
        return SegmentReceiver(self, name, size, source)

    async def receive_segment(
        self, name: SegmentName, size: int | None, chunks: AsyncIterator[bytes], source: str,
    ) -> "ReceivedSegment | str":
        """The first half of `accept_segment`: stream the bytes into a temp file and
        verify them (size, SHA-256); nothing is visible yet. Returns a
        `ReceivedSegment` to commit (fsync, rename, index), or have / tombstoned when
        there is nothing to write. A catch-up commits one segment while the next
        streams in: their fsyncs overlap instead of queueing behind the stream."""
        receiver = SegmentReceiver(self, name, size, source)
        try:
            status = await self._write_batches(chunks, receiver.write_batch)
        except BaseException as e:
            receiver.fail(e)
            raise
        return receiver.result(status)

    async def _write_batches(self, chunks: AsyncIterator[bytes], write) -> str | None:
        """Chunks are batched as they come (no copying) and each batch is written in
        one thread hop; a segment of up to UPLOAD_BUFFER bytes takes a single hop for
        open, write and verify: a hop costs more than writing a few hundred KiB to the
        page cache. Returns have / tombstoned if the segment needs no writing."""
        batch: list[bytes] = []
        batched = 0
        async for chunk in chunks:
            batch.append(chunk)
            batched += len(chunk)
            if batched > UPLOAD_BUFFER:
                status = await trio.to_thread.run_sync(write, batch, False)
                if status is not None:  # tombstoned or here: the rest is not needed
                    return status
                batch, batched = [], 0
        return await trio.to_thread.run_sync(write, batch, True)

    async def accept_tombstone(self, name: SegmentName, source: str) -> str:
        """Create `name`'s tombstone (stored, or have if it was there). It is indexed
        before its file appears: from the moment the file is visible, no listing or
        digest of this node shows the segment (a failed write takes it out again)."""
        self.received.add(name.tombstone_path)
        indexed = self.index.has(name, Kind.TOMBSTONE)
        self.index.add(name, Kind.TOMBSTONE)
        try:
            created = await trio.to_thread.run_sync(self.store.create_tombstone, name)
        except OSError:
            if not indexed and not await trio.to_thread.run_sync(
                    self.store.has_tombstone, name):
                self.index.discard(name, Kind.TOMBSTONE)
            raise
        status = "stored" if created else "have"
        self.metrics.received.labels("tombstone", status).inc()
        if created:
            log.info("tombstone %s (from %s)", name.tombstone_path, source)
        return status


class SegmentReceiver:
    """One segment from a peer on its way into a temp file, driven from a worker
    thread (blocking calls only): the async path hands it batches in thread hops, a
    threaded batch fetch (`agent.peers.threaded_fetch`) writes each read as it
    arrives. The checks run in the thread too: a lookup of a name not yet in the
    directory waits for its lock, which a rename stuck behind a journal commit holds."""

    def __init__(self, ingest: Ingest, name: SegmentName, size: int | None,
                 source: str) -> None:
        self.ingest = ingest
        self.name = name
        self.size = size
        self.source = source
        self.writer: SegmentWriter | None = None
        self.skipped: str | None = None  # have or tombstoned: its bytes are not written

    def write_batch(self, batch: list, last: bool) -> str | None:
        """Write `batch` (opening the temp file with the first one unless the segment
        is tombstoned or here already) and verify after the last. Returns have or
        tombstoned when the rest is not needed."""
        if self.skipped is not None:
            return self.skipped
        store = self.ingest.store
        if self.writer is None:
            if store.has_tombstone(self.name):
                self.skipped = "tombstoned"
                return self.skipped
            if store.has_segment(self.name):
                self.skipped = "have"
                return self.skipped
            self.writer = store.open_writer(self.name, self.size)
        if batch:
            self.writer.write_many(batch)
        if last:
            self.writer.verify()
        return None

    def write(self, data) -> "ReceivedSegment | str | None":
        """A threaded fetch's read (`agent.peers.threaded_fetch.SegmentSink`): None, or
        have / tombstoned when the rest is not needed."""
        status = self.write_batch([data], False)
        return None if status is None else self.result(status)

    def end(self) -> "ReceivedSegment | str":
        """Every byte arrived: verified, what to commit (or have / tombstoned)."""
        return self.result(self.write_batch([], True))

    def fail(self, e: BaseException) -> None:
        """The segment will not be committed: its temp file goes, the reason is
        counted (thread-safe: prometheus counters lock)."""
        if self.writer is not None:
            self.writer.abort()
        metrics = self.ingest.metrics
        if isinstance(e, WriteRejected):
            if e.reason == "hash_mismatch":
                metrics.hash_mismatches.labels(self.source).inc()
            metrics.received.labels("segment", e.reason).inc()
        else:
            metrics.received.labels("segment", "error").inc()

    def result(self, status: str | None) -> "ReceivedSegment | str":
        """After the last batch: what to commit, or have / tombstoned."""
        if status is not None:
            self.ingest.metrics.received.labels("segment", status).inc()
            return status
        assert self.writer is not None
        return ReceivedSegment(self.ingest, self.writer, self.name, self.source)


class ReceivedSegment:
    """A segment streamed into its temp file and verified, not yet visible: `commit`
    makes it so (fsync, rename, index), or `abort` drops it."""

    def __init__(self, ingest: Ingest, writer: SegmentWriter, name: SegmentName,
                 source: str) -> None:
        self.ingest = ingest
        self.writer = writer
        self.name = name
        self.source = source

    @property
    def size(self) -> int:
        return self.writer.size

    def abort(self) -> None:
        self.writer.abort()

    async def commit(self, sync_dir: bool = True) -> str:
        """stored, or have (a copy arrived meanwhile); raises WriteRejected
        (tombstoned meanwhile) or OSError. See `SegmentWriter.commit`."""
        metrics = self.ingest.metrics
        # before the rename: the watcher's event for the file is an echo, not news
        self.ingest.received.add(self.name.path)
        try:
            status = await trio.to_thread.run_sync(self.writer.commit, sync_dir)
        except WriteRejected as e:
            metrics.received.labels("segment", e.reason).inc()
            raise
        except BaseException:
            self.writer.abort()
            metrics.received.labels("segment", "error").inc()
            raise
        if status == "stored":
            self.ingest.stored(self.name, self.writer.size, self.source)
        metrics.received.labels("segment", status).inc()
        return status
