"""One segsync agent: the store, index, watcher, pusher, backfiller and server, in one nursery."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import AsyncIterator

import trio

from protocol.errors import SegmentNameError
from protocol.hashing import SegmentHasher
from protocol.names import Kind, SegmentName, parse_path
from protocol.recording import TEMP_TTL

from .backfill import Backfiller
from .client import PeerClient, PeerError
from .config import Config, ConfigError, read_peers_file
from .index import ArchiveIndex
from .metrics import Metrics
from .pusher import Pusher
from .recording import DownloaderTracker
from .recent import RecentSet
from .server import App
from .store import SegmentWriter, Store, WriteRejected, classify_hour
from .watcher import ArchiveWatcher, Batch

log = logging.getLogger(__name__)

UPLOAD_BUFFER = 1024 * 1024
HASH_CHUNK = 1024 * 1024


def file_matches_name(path: Path, name: SegmentName) -> bool:
    """True when the file's bytes hash to its name (so it is complete)."""
    hasher = SegmentHasher()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                hasher.update(chunk)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return False
    return hasher.digest() == name.hash


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.root, config.max_segment_bytes)
        self.index = ArchiveIndex()
        self.metrics = Metrics()
        self.received = RecentSet(100_000)   # paths peers sent us: never pushed back
        self.announced = RecentSet(100_000)  # paths already queued for push
        self.downloader = DownloaderTracker(
            self.store, self.index, self.metrics, enabled=config.defer_push,
            idle_after=config.recording_idle, temp_ttl=TEMP_TTL,
            recent_window=config.recent_window)
        self.pusher = Pusher(self)
        self.backfiller = Backfiller(self)
        self.watcher = ArchiveWatcher(Path(config.root))
        self.file_peers: list[str] = []
        self.url: str | None = None
        self.cancel_scope = trio.CancelScope()
        self._rescan_wanted = trio.Event()
        self._rescan_reason = "start"
        self.started_at = time.time()

    # ---- life cycle ----

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with self.cancel_scope:
            async with trio.open_nursery() as nursery:
                if self.config.peers_file is not None:
                    self._load_peers_file()
                await nursery.start(self.watcher.run, self.handle_batch)
                await self.rescan(push_new=False, remove_temp=True)
                binds = await nursery.start(self._serve)
                self.url = binds[0]
                await nursery.start(self.pusher.run)
                nursery.start_soon(self._rescan_loop)
                if self.config.peers_file is not None:
                    nursery.start_soon(self._peers_file_loop)
                if self.config.backfill:
                    nursery.start_soon(self.backfiller.run)
                log.info("segsync node %s serving %s on %s, peers: %s", self.config.node_name,
                         self.config.root, self.url, ", ".join(self.peer_urls()) or "none")
                task_status.started(self.url)

    def stop(self) -> None:
        self.cancel_scope.cancel()

    async def _serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # imported here: the one-shot backfill never serves, and hypercorn (with h2 and
        # wsproto) is a tenth of a second of its start-up
        from hypercorn.config import Config as HypercornConfig

        from .httpserver import serve

        hc = HypercornConfig()
        host, port = self.config.listen_host_port
        hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        hc.accesslog = None
        hc.errorlog = logging.getLogger("hypercorn.error")
        hc.graceful_timeout = 2.0
        hc.keep_alive_timeout = 30.0
        hc.h11_max_incomplete_size = 16 * 1024
        hc.read_timeout = 30
        await serve(App(self), hc, task_status=task_status)

    # ---- peers ----

    def peer_urls(self) -> list[str]:
        out = list(self.config.peers)
        for url in self.file_peers:
            if url not in out:
                out.append(url)
        return out

    def _load_peers_file(self) -> bool:
        assert self.config.peers_file is not None
        try:
            peers = read_peers_file(self.config.peers_file)
        except ConfigError as e:
            log.error("%s; keeping the last good peer list", e)
            return False
        if peers != self.file_peers:
            log.info("peers file: %s", ", ".join(peers) or "no peers")
            self.file_peers = peers
            return True
        return False

    async def _peers_file_loop(self) -> None:
        path = self.config.peers_file
        assert path is not None
        last = None
        while True:
            try:
                st = path.stat()
                sig = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                sig = None
            if sig != last:
                last = sig
                if self._load_peers_file():
                    self.pusher.set_peers(self.peer_urls())
            await trio.sleep(1.0)

    # ---- local files (from the watcher and rescans) ----

    def relative(self, path: str) -> str | None:
        try:
            rel = os.path.relpath(path, self.config.root)
        except ValueError:
            return None
        return None if rel.startswith("..") else rel.replace(os.sep, "/")

    async def handle_batch(self, batch: Batch) -> None:
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
            self.downloader.file_event(name, kind, event.deleted, rel in self.received)
            if event.deleted:
                if not os.path.exists(event.path):
                    self.index.discard(name, kind)
                continue
            await self.local_file_appeared(name, kind, now)

    async def _scan_new_directory(self, path: Path, now: float) -> None:
        """A directory created or moved in: its files may never get events of their own."""
        def walk() -> list[str]:
            found = []
            for dirpath, _, files in os.walk(path):
                found.extend(os.path.join(dirpath, f) for f in files)
                if len(found) > 100_000:
                    break
            return found

        for file_path in await trio.to_thread.run_sync(walk):
            rel = self.relative(file_path)
            try:
                name, kind = parse_path(rel)
            except SegmentNameError:
                continue
            await self.local_file_appeared(name, kind, now)

    async def local_file_appeared(self, name: SegmentName, kind: Kind, seen_at: float) -> None:
        """A final name appeared locally: index it and, if it is new here, push it."""
        if not name.replicable:
            return
        path = name.format(kind)
        if kind is Kind.TOMBSTONE:
            if not self.store.path_of(name, kind).exists():
                return
            self.index.add(name, kind)
            if path in self.received or path in self.announced:
                return
            self.announced.add(path)
            self.pusher.push(name, kind, seen_at)
            return
        if path in self.announced:
            return
        if path in self.received:
            self.index.add(name, kind)
            return
        if not await trio.to_thread.run_sync(file_matches_name, self.store.path_of(name), name):
            return  # still being written, or corrupt: its next event (or a rescan) retries
        if self.index.add(name, kind):
            self.metrics.indexed_segments.inc()
        if self.index.has(name, Kind.TOMBSTONE):
            return
        self.announced.add(path)
        self.pusher.push(name, kind, seen_at)

    # ---- rescans ----

    def request_rescan(self, reason: str) -> None:
        self._rescan_reason = reason
        self._rescan_wanted.set()

    async def _rescan_loop(self) -> None:
        while True:
            with trio.move_on_after(self.config.rescan_interval):
                await self._rescan_wanted.wait()
            reason = self._rescan_reason if self._rescan_wanted.is_set() else "periodic"
            self._rescan_wanted = trio.Event()
            self.metrics.watcher_rescans.labels(reason).inc()
            log.info("rescanning the archive (%s)", reason)
            await self.rescan(push_new=True)

    async def rescan(self, push_new: bool, remove_temp: bool = False) -> int:
        """Full scan into a fresh index; push what the watcher never told us about."""
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
        if push_new:
            for channel, quality, hour, names in scanned:
                known = self.index.names(channel, quality, hour)
                for filename in names:
                    if filename not in known:
                        new.append(parse_path(f"{channel}/{quality}/{hour}/{filename}"))
        self.index.replace_all(scanned)
        self.metrics.indexed_segments.set(self.index.segment_count())
        now = trio.current_time()
        for name, kind in new:
            await self.local_file_appeared(name, kind, now)
        return len(new)

    # ---- what peers send us ----

    async def accept_segment(
        self, name: SegmentName, size: int | None, chunks: AsyncIterator[bytes], source: str,
        sync_dir: bool = True,
    ) -> str:
        """Stream a segment from a peer into the store: verified, atomic, indexed.
        `sync_dir=False`: the caller fsyncs the hour directory later (see
        `SegmentWriter.commit`), once for many segments."""
        metrics = self.metrics
        writer: SegmentWriter | None = None

        def write(batch: list[bytes], last: bool) -> str | None:
            """One thread hop: open the temp file with the first batch (unless the
            segment is tombstoned or here already), write, and commit after the last.
            The checks run in the thread too: a lookup of a name not yet in the
            directory waits for its lock, which a rename stuck behind a journal commit
            holds."""
            nonlocal writer
            if writer is None:
                if self.store.has_tombstone(name):
                    return "tombstoned"
                if self.store.has_segment(name):
                    return "have"
                writer = self.store.open_writer(name, size)
            if batch:
                writer.write_many(batch)
            return writer.commit(sync_dir) if last else None

        try:
            # chunks are batched as they come (no copying) and each batch is written
            # in one thread hop; a segment of up to UPLOAD_BUFFER bytes takes a single
            # hop for open, write and commit: a hop costs more than writing a few
            # hundred KiB to the page cache
            batch: list[bytes] = []
            batched = 0
            status: str | None = None
            async for chunk in chunks:
                batch.append(chunk)
                batched += len(chunk)
                if batched > UPLOAD_BUFFER:
                    status = await trio.to_thread.run_sync(write, batch, False)
                    if status is not None:  # tombstoned or here: the rest is not needed
                        break
                    batch, batched = [], 0
            if status is None:
                self.received.add(name.path)  # before the rename: the watcher sees an echo
                status = await trio.to_thread.run_sync(write, batch, True)
        except WriteRejected as e:
            if writer is not None:
                writer.abort()
            if e.reason == "hash_mismatch":
                metrics.hash_mismatches.labels(source).inc()
            metrics.received.labels("segment", e.reason).inc()
            raise
        except BaseException:
            if writer is not None:
                writer.abort()
            metrics.received.labels("segment", "error").inc()
            raise
        assert status is not None
        if status == "stored":
            self.index.add(name, Kind.SEGMENT)
            metrics.indexed_segments.inc()
            assert writer is not None
            metrics.bytes.labels("received" if source == "push" else "pulled").inc(writer.size)
        metrics.received.labels("segment", status).inc()
        return status

    async def accept_tombstone(self, name: SegmentName, source: str) -> str:
        self.received.add(name.tombstone_path)
        created = await trio.to_thread.run_sync(self.store.create_tombstone, name)
        self.index.add(name, Kind.TOMBSTONE)
        status = "stored" if created else "have"
        self.metrics.received.labels("tombstone", status).inc()
        if created:
            log.info("tombstone %s (from %s)", name.tombstone_path, source)
        return status

    # ---- status ----

    async def probe_peers(self, timeout: float = 2.0) -> dict[str, str | None]:
        """Ask every peer's /healthz now, in parallel: url -> None (answered) or the error."""
        out: dict[str, str | None] = {}

        async def probe(url: str) -> None:
            client = PeerClient(url, concurrency=1, connect_timeout=timeout, timeout=timeout)
            try:
                await client.ping()
                out[url] = None
            except PeerError as e:
                out[url] = str(e)
            finally:
                await client.aclose()

        async with trio.open_nursery() as nursery:
            for url in self.peer_urls():
                nursery.start_soon(probe, url)
        return out

    def status(self, probes: dict[str, str | None] | None = None) -> dict:
        """What `segsync status` shows; `probes` (from probe_peers) decides "reachable"."""
        peers = []
        for url in self.peer_urls():
            pusher = self.pusher.peers.get(url)
            peers.append({
                "url": url,
                "queue_depth": pusher.depth() if pusher else 0,
                "last_push": pusher.last_success if pusher else None,
                "push_error": pusher.last_error if pusher else None,
                "push_dropped": pusher.dropped if pusher else 0,
                "push_deferred": len(pusher.reoffers) if pusher else 0,
                **self.backfiller.peer_status(url),
            })
            if probes is not None and url in probes:
                peers[-1]["reachable"] = probes[url] is None
                peers[-1]["reach_error"] = probes[url]
        return {
            "node": self.config.node_name,
            "url": self.url,
            "started_at": self.started_at,
            "time": time.time(),  # ages are computed against the node's own clock
            "segments": self.index.segment_count(),
            **self.downloader.status(),
            "peers": peers,
        }

