"""Local chat batches and extras files: what the watcher and rescans see becomes
index entries and pushes (unless a peer sent it: the echo guard).

A chat batch is indexed only when its bytes hash to its name (the archiver renames
complete files into place; anything else is corrupt). A chat batch that goes away
(the merger replaced it) is only forgotten: never a deletion to replicate. Temp and
hidden files are ignored quietly; a symlink or a hostile name is logged once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Callable, Iterable

import trio

from protocol.filesets import chat as ch
from protocol.filesets import extras as ex
from protocol.filesets import sets as fs
from protocol.errors import FileNameError

from .index import FileSetIndex
from .ingest import FileSetIngest, FileSetMetrics
from .tree import RefusedPath, SafeTree, entry_parts, set_root_parts

log = logging.getLogger(__name__)

# (kind, key, rel, size) of a file that appeared here and is new
AnnounceFile = Callable[[str, str, str, int], None]


def classify_local(rel_to_root: str, extras_dirs: frozenset[str]
                   ) -> tuple[str, str, str] | None:
    """A path under ROOT -> (kind, key, rel) if it is a replicable file-set entry."""
    parts = rel_to_root.split("/")
    if len(parts) == 4 and parts[1] == ch.CHAT_QUALITY:
        rel = f"{parts[2]}/{parts[3]}"
        try:
            ch.parse_chat_rel(parts[0], rel)
        except FileNameError:
            return None
        return fs.CHAT, parts[0], rel
    if len(parts) >= 2 and parts[0] in extras_dirs:
        rel = "/".join(parts[1:])
        if ex.classify_extras_path(rel)[0] != "ok":
            return None
        return fs.EXTRAS, parts[0], rel
    return None


class LocalFileSets:
    def __init__(self, tree: SafeTree, index: FileSetIndex, ingest: FileSetIngest,
                 metrics: FileSetMetrics, extras_dirs: Iterable[str],
                 announce: AnnounceFile | None = None) -> None:
        self.tree = tree
        self.index = index
        self.ingest = ingest
        self.metrics = metrics
        self.extras_dirs = frozenset(extras_dirs)
        self.announce = announce
        self.root = str(tree.root)

    def relative(self, path: str) -> str | None:
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:
            return None
        return None if rel.startswith("..") else rel.replace(os.sep, "/")

    def _stat(self, kind: str, key: str, rel: str) -> int | None:
        """The size of a regular file that is a good entry (a chat batch hashing to its
        name); None when absent, a symlink, or not good."""
        parts = entry_parts(kind, key, rel)
        try:
            with self.tree.open_read(parts) as f:
                size = os.fstat(f.fileno()).st_size
                if kind == fs.CHAT and rel.endswith(ch.BATCH_SUFFIX):
                    if size > fs.MAX_FILE_BYTES:
                        return None
                    h = hashlib.sha256()
                    while chunk := f.read(1024 * 1024):
                        h.update(chunk)
                    if h.digest() != ch.parse_chat_rel(key, rel).hash:
                        self.tree.log_once("/".join(parts), "does not hash to its name: "
                                           "not replicated")
                        return None
                return size
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
            return None
        except RefusedPath as e:
            self.tree.log_once("/".join(parts), f"{e}: not replicated")
            return None

    async def handle_paths(self, paths: list[tuple[str, bool, bool]]) -> None:
        """Watcher events: (absolute path, deleted, directory)."""
        for path, deleted, directory in paths:
            rel_root = self.relative(path)
            if rel_root is None:
                continue
            if directory:
                await self._new_directory(rel_root)
                continue
            found = classify_local(rel_root, self.extras_dirs)
            if found is None:
                continue
            kind, key, rel = found
            if deleted:
                if not await trio.to_thread.run_sync(
                        self.tree.exists, entry_parts(kind, key, rel)):
                    self.index.discard(kind, key, rel)
                continue
            await self.appeared(kind, key, rel)

    async def appeared(self, kind: str, key: str, rel: str, size: int | None = None) -> None:
        if self.index.has(kind, key, rel):
            return
        if size is None:
            size = await trio.to_thread.run_sync(self._stat, kind, key, rel)
            if size is None:
                return
        if not self.index.add(kind, key, rel, size):
            return
        self.metrics.set_counts(self.index.counts())
        if self.announce is not None and not self.ingest.came_from_peer(kind, key, rel):
            self.announce(kind, key, rel, size)

    async def _new_directory(self, rel_root: str) -> None:
        """A directory created or moved in: its files may never get events of their own."""
        parts = rel_root.split("/")
        if len(parts) >= 2 and parts[1] == ch.CHAT_QUALITY:
            if len(parts) == 2:
                await self.rescan_set(fs.CHAT, parts[0])
            elif len(parts) == 3:
                files = await trio.to_thread.run_sync(self.tree.scan_chat, parts[0])
                for rel in files:
                    if rel.startswith(parts[2] + "/"):
                        await self.appeared(fs.CHAT, parts[0], rel)
        elif parts[0] in self.extras_dirs:
            if len(parts) == 1:
                await self.rescan_set(fs.EXTRAS, parts[0])
                return
            prefix = "/".join(parts[1:]) + "/"
            files = await trio.to_thread.run_sync(self.tree.scan_extras, parts[0])
            for rel, size in files.items():
                if rel.startswith(prefix):
                    await self.appeared(fs.EXTRAS, parts[0], rel, size)

    async def rescan_set(self, kind: str, key: str, announce_new: bool = True) -> int:
        if kind == fs.CHAT:
            files = await trio.to_thread.run_sync(self.tree.scan_chat, key)
            good = await trio.to_thread.run_sync(self._verified_chat, key, files)
        else:
            good = await trio.to_thread.run_sync(self.tree.scan_extras, key)
        new = self.index.replace_set(kind, key, good)
        if announce_new and self.announce is not None:
            for rel in new:
                if not self.ingest.came_from_peer(kind, key, rel):
                    self.announce(kind, key, rel, good[rel])
        return len(new)

    def _verified_chat(self, channel: str, files: dict[str, int]) -> dict[str, int]:
        """Chat batches already indexed keep their place; new ones are hashed."""
        out = {}
        for rel, size in files.items():
            if rel.endswith(ch.TOMBSTONE_SUFFIX) or self.index.has(fs.CHAT, channel, rel):
                out[rel] = size
                continue
            checked = self._stat(fs.CHAT, channel, rel)
            if checked is not None:
                out[rel] = checked
        return out

    async def rescan(self, announce_new: bool, remove_temp: bool = False) -> int:
        """Every chat set and every extras directory, into the index."""
        channels = await trio.to_thread.run_sync(self.tree.chat_channels)
        sets = [(fs.CHAT, c) for c in channels] + [(fs.EXTRAS, d)
                                                   for d in sorted(self.extras_dirs)]
        if remove_temp:
            def clean() -> None:
                for kind, key in sets:
                    for p in self.tree.remove_temp_files(set_root_parts(kind, key)):
                        log.info("removed temp file left by a crash: %s", p)
            await trio.to_thread.run_sync(clean)
        new = 0
        for kind, key in sets:
            new += await self.rescan_set(kind, key, announce_new)
        for kind, key in list(self.index.sets):
            if (kind, key) not in sets:
                self.index.replace_set(kind, key, {})
        self.metrics.set_counts(self.index.counts())
        return new
