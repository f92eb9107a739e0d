"""Where a node's peers come from: flags, a node file, wubloader's nodes database.

Each source keeps its last good list when it fails: an unreadable or invalid node
file, an unreachable database or a failing query never empties the peer list. The
file is re-read when it changes; the database once per backfill interval. The
merge (one peer per URL, this node left out by name) is `protocol.peerlist`'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import trio

from protocol.peerlist import MergedPeers, PeerEntry, SourceHealth, merge_peers

from .config import ConfigError, read_peers_file
from .node_database import NodeDatabase, NodeDatabaseError

log = logging.getLogger(__name__)

FILE_POLL = 1.0  # seconds between checks of the node file for a change


class PeerSources:
    def __init__(self, flag_urls: Callable[[], list[str]], self_name: str,
                 peers_file: Path | None, database: NodeDatabase | None,
                 database_interval: float, failures=None,
                 clock: Callable[[], float] = time.time) -> None:
        self._flag_urls = flag_urls  # read on every merge: flags can be changed live
        self.self_name = self_name
        self.peers_file = peers_file
        self.database = database
        self.database_interval = database_interval
        self.failures = failures  # a counter labelled by source, or None
        self.clock = clock
        self.file_entries: list[PeerEntry] = []
        self.file_error: str | None = None
        self.database_entries: list[PeerEntry] = []
        self.database_health = SourceHealth()
        self.database_reads = 0  # attempts, failed ones included
        self._reported: tuple = ()

    # ---- the merged list ----

    def merged(self) -> MergedPeers:
        flags = [PeerEntry(None, url) for url in self._flag_urls()]
        return merge_peers([flags, self.file_entries, self.database_entries], self.self_name)

    def urls(self) -> list[str]:
        return self.merged().urls()

    def names(self) -> dict[str, str]:
        """url -> name, for the peers a source names."""
        return self.merged().names()

    def _report(self) -> None:
        """Log the merge's left-outs and conflicts when they change, not every time."""
        merged = self.merged()
        reported = (tuple(merged.skipped_self), tuple(merged.conflicts))
        if reported == self._reported:
            return
        self._reported = reported
        for entry in merged.skipped_self:
            log.info("peer %s %s is this node (--node-name): not a peer", entry.name, entry.url)
        for conflict in merged.conflicts:
            log.warning("peer list: %s", conflict)

    # ---- the node file ----

    def load_file(self) -> bool:
        """(Re-)read the node file; True if its list changed. A bad file keeps the
        last good list."""
        return self.peers_file is not None and self._apply_file(self._read_file())

    def _read_file(self) -> list[PeerEntry] | ConfigError:
        assert self.peers_file is not None
        try:
            return read_peers_file(self.peers_file)
        except ConfigError as e:
            return e

    def _apply_file(self, entries: list[PeerEntry] | ConfigError) -> bool:
        if isinstance(entries, ConfigError):
            self._count_failure("peers_file")
            self.file_error = str(entries)
            log.error("%s; keeping the last good peer list", entries)
            return False
        self.file_error = None
        if entries == self.file_entries:
            return False
        log.info("peers file: %s",
                 ", ".join(f"{e.name} {e.url}" if e.name else e.url for e in entries)
                 or "no peers")
        self.file_entries = entries
        self._report()
        return True

    async def _file_loop(self, on_change: Callable[[], None]) -> None:
        path = self.peers_file
        assert path is not None
        last = None
        while True:
            try:
                st = await trio.to_thread.run_sync(path.stat)
                sig = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                sig = None
            if sig != last:
                last = sig
                if self._apply_file(await trio.to_thread.run_sync(self._read_file)):
                    on_change()
            await trio.sleep(FILE_POLL)

    # ---- the nodes database ----

    async def read_database(self) -> bool:
        """One read of the nodes table; True if its list changed. On failure the last
        known list stays, and the outage is logged once, when it starts."""
        assert self.database is not None
        self.database_reads += 1
        try:
            entries = await self.database.read()
        except NodeDatabaseError as e:
            self._count_failure("node_database")
            if self.database_health.failed(str(e), self.clock()):
                log.error("%s; keeping the last known %d nodes until it answers again",
                          e, len(self.database_entries))
            return False
        if self.database_health.succeeded(self.clock()):
            log.info("nodes table at %s answers again", self.database.where)
        if entries == self.database_entries:
            return False
        log.info("nodes table at %s: %s", self.database.where,
                 ", ".join(f"{e.name} {e.url}" for e in entries) or "no nodes")
        self.database_entries = entries
        self._report()
        return True

    async def _database_loop(self, on_change: Callable[[], None]) -> None:
        while True:
            await trio.sleep(self.database_interval)
            if await self.read_database():
                on_change()

    # ---- running ----

    async def run(self, on_change: Callable[[], None],
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Follow the sources; `on_change()` after each change of the merged list.
        Started once the database has been read a first time (or failed to be), so
        its nodes count as known at start-up."""
        async with trio.open_nursery() as nursery:
            if self.peers_file is not None:
                nursery.start_soon(self._file_loop, on_change)
            if self.database is not None:
                if await self.read_database():
                    on_change()
                nursery.start_soon(self._database_loop, on_change)
            task_status.started()

    def _count_failure(self, source: str) -> None:
        if self.failures is not None:
            self.failures.labels(source).inc()

    def status(self) -> dict:
        """The sources' state for /v1/status; None for a source not configured."""
        database = None
        if self.database is not None:
            health = self.database_health
            database = {
                "where": self.database.where,
                "ok": None if self.database_reads == 0 else health.error is None,
                "error": health.error,
                "failing_since": health.failing_since,
                "last_read": health.last_success,
                "nodes": len(self.database_entries),
            }
        peers_file = None
        if self.peers_file is not None:
            peers_file = {"path": str(self.peers_file), "error": self.file_error,
                          "peers": len(self.file_entries)}
        return {"peers_file": peers_file, "node_database": database}
