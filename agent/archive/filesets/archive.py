"""`FileSetArchive`: a node's chat batches and extras files, its parts built together
(the node and the one-shot backfill each hold one)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import trio

from .index import FileSetIndex
from .ingest import FileSetIngest, FileSetMetrics
from .local import AnnounceFile, LocalFileSets
from .tree import SafeTree


class FileSetArchive:
    def __init__(self, root: str | Path, extras_dirs: Iterable[str], registry,
                 max_bytes: int | None = None) -> None:
        self.extras_dirs = tuple(dict.fromkeys(extras_dirs))
        self.tree = SafeTree(root)
        self.index = FileSetIndex()
        self.metrics = FileSetMetrics(registry)
        self.ingest = FileSetIngest(self.tree, self.index, self.metrics,
                                    **({"max_bytes": max_bytes} if max_bytes else {}))
        self.local = LocalFileSets(self.tree, self.index, self.ingest, self.metrics,
                                   self.extras_dirs)
        self._rescan_wanted = trio.Event()

    def announce_to(self, announce: AnnounceFile) -> None:
        """New local files go to `announce` (the pusher) from now on."""
        self.local.announce = announce

    async def handle_batch(self, batch) -> None:
        """The watcher's batch (agent.archive.watcher.Batch): its events, or a rescan."""
        if batch.rescan:
            self._rescan_wanted.set()
        await self.local.handle_paths([(e.path, e.deleted, e.directory)
                                       for e in batch.events])

    async def rescan_loop(self, interval: float) -> None:
        """A rescan when the watcher lost events, and every `interval` seconds."""
        while True:
            with trio.move_on_after(interval):
                await self._rescan_wanted.wait()
            self._rescan_wanted = trio.Event()
            await self.local.rescan(announce_new=True)

    def counts(self) -> dict[str, int]:
        return self.index.counts()
