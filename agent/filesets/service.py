"""`FileSets`: the chat and extras replication of one node, its parts built and
connected in one place (the node, and the one-shot backfill, hold one of these)."""

from __future__ import annotations

import logging
from typing import Iterable

import trio

from protocol.digests import hour_range
from protocol.peerkind import PeerKind

from .index import FileSetIndex
from .ingest import FileSetIngest, FileSetMetrics
from .local import LocalFileSets
from .pull import FileRoundStats, FileSetPuller
from .push import FileSetPusher
from .serve import FileSetServer
from .tree import SafeTree

log = logging.getLogger(__name__)


class FileSets:
    def __init__(self, root, extras_dirs: Iterable[str], registry, *,
                 max_concurrency: int = 5, request_timeout: float = 10.0,
                 max_bytes: int | None = None) -> None:
        self.extras_dirs = tuple(dict.fromkeys(extras_dirs))
        self.tree = SafeTree(root)
        self.index = FileSetIndex()
        self.metrics = FileSetMetrics(registry)
        self.ingest = FileSetIngest(self.tree, self.index, self.metrics,
                                    **({"max_bytes": max_bytes} if max_bytes else {}))
        self.pusher: FileSetPusher | None = None
        self.local = LocalFileSets(self.tree, self.index, self.ingest, self.metrics,
                                   self.extras_dirs, announce=self._announce)
        self.puller = FileSetPuller(self.index, self.ingest, self.metrics, self.extras_dirs,
                                    max_concurrency)
        self.server = FileSetServer(self.index, self.ingest, self.tree, self.metrics,
                                    self.extras_dirs, request_timeout)
        self.last_rounds: dict[str, FileRoundStats] = {}

    def enable_push(self, peers, clients, kinds) -> FileSetPusher:
        self.pusher = FileSetPusher(peers, clients, kinds, self.tree, self.metrics)
        return self.pusher

    def _announce(self, kind: str, key: str, rel: str, size: int) -> None:
        if self.pusher is not None:
            self.pusher.push(kind, key, rel, size)

    async def handle_events(self, events) -> None:
        """The watcher's events (objects with path, deleted, directory)."""
        await self.local.handle_paths([(e.path, e.deleted, e.directory) for e in events])

    async def rescan_loop(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            await self.local.rescan(announce_new=True)

    async def round_with(self, peer, kind: PeerKind, clients, hours: tuple[str, str],
                         concurrency: int = 7) -> FileRoundStats:
        """One round of chat and extras with one peer, of the kind it is."""
        label = peer.name
        if kind is PeerKind.WUBLOADER:
            async with clients.wubloader_client(peer, concurrency=concurrency) as client:
                stats = await self.puller.round_wubloader(client, label, hours)
        else:
            async with clients.client(peer, concurrency=concurrency) as client:
                stats = await self.puller.round_segsync(client, label, hours)
        self.last_rounds[peer.url] = stats
        self.metrics.set_counts(self.index.counts())
        return stats

    def counts(self) -> dict[str, int]:
        return self.index.counts()


__all__ = ["FileSets", "hour_range"]
