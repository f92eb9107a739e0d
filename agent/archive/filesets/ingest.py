"""The one way a chat batch or extras file from a peer enters the archive, and the
counters of file-set replication.

Verified before it becomes visible: a chat batch against the hash in its name, an
extras file against the size the listing gave and (from a segsync peer) the
SHA-256 the sender computed. Written through `SafeTree` (no symlinks, never
replacing a file). What peers sent is remembered (the echo guard): the watcher's
event for it is not pushed back.
"""

from __future__ import annotations

import hashlib
import logging
from typing import AsyncIterator

import trio
from prometheus_client import Counter, Gauge

from protocol.filesets import chat as ch
from protocol.filesets import sets as fs

from ..recent import RecentSet
from .index import FileSetIndex
from .tree import FileExists, RefusedPath, SafeTree, entry_parts

log = logging.getLogger(__name__)

UPLOAD_BUFFER = 1024 * 1024


class FileSetMetrics:
    """Prometheus counters of chat and extras replication, in the node's registry."""

    def __init__(self, registry) -> None:
        r = registry
        self.files = Gauge("segsync_fileset_files", "Chat batches, chat tombstones and "
                           "extras files held", ["kind"], registry=r)
        self.pushes = Counter("segsync_fileset_pushes", "Chat and extras pushes by outcome",
                              ["peer", "kind", "outcome"], registry=r)
        self.pulls = Counter("segsync_fileset_pulls", "Chat and extras fetches by outcome",
                             ["peer", "kind", "outcome"], registry=r)
        self.received = Counter("segsync_fileset_received", "Chat and extras files stored, "
                                "by how they came and outcome", ["kind", "outcome"], registry=r)
        self.refused = Counter("segsync_fileset_refused_paths", "Listed paths refused as "
                               "hostile or malformed", ["kind"], registry=r)
        self.bytes = Counter("segsync_fileset_bytes", "Chat and extras bytes moved",
                             ["direction"], registry=r)

    def set_counts(self, counts: dict[str, int]) -> None:
        for kind, n in counts.items():
            self.files.labels(kind).set(n)


class Rejected(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class FileSetIngest:
    def __init__(self, tree: SafeTree, index: FileSetIndex, metrics: FileSetMetrics,
                 max_bytes: int = fs.MAX_FILE_BYTES) -> None:
        self.tree = tree
        self.index = index
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.received = RecentSet(100_000)  # "kind/key/rel" peers sent us

    @staticmethod
    def echo_key(kind: str, key: str, rel: str) -> str:
        return f"{kind}/{key}/{rel}"

    def came_from_peer(self, kind: str, key: str, rel: str) -> bool:
        return self.echo_key(kind, key, rel) in self.received

    def offer_status(self, kind: str, key: str, rel: str) -> str:
        if self.index.has(kind, key, rel):
            return "have"
        if kind == fs.CHAT and rel.endswith(ch.BATCH_SUFFIX):
            if self.index.has(kind, key, rel[: -len(ch.BATCH_SUFFIX)] + ch.TOMBSTONE_SUFFIX):
                return "tombstoned"
        return "want"

    async def accept(self, kind: str, key: str, rel: str, size: int | None,
                     sha256: bytes | None, chunks: AsyncIterator[bytes], source: str) -> str:
        """Store one file (rel already checked): 'stored', 'have' or 'tombstoned'.
        Raises Rejected (bad bytes, refused path) or OSError (storage)."""
        status = self.offer_status(kind, key, rel)
        if status != "want":
            async for _ in chunks:  # the body is read and dropped
                pass
            self.metrics.received.labels(kind, status).inc()
            return status
        if kind == fs.CHAT and rel.endswith(ch.TOMBSTONE_SUFFIX):
            async for chunk in chunks:
                if chunk:
                    raise Rejected("bad_tombstone", "a chat tombstone is an empty file")
            return await self.accept_tombstone(key, rel, source)
        limit = size if size is not None else self.max_bytes
        h = hashlib.sha256()
        got = 0
        buffered: list[bytes] = []
        held = 0
        new = None  # a large file goes to its temp file as it comes
        try:
            async for chunk in chunks:
                got += len(chunk)
                if got > limit:
                    raise Rejected("too_large", f"{kind}/{key}/{rel}: more than {limit} bytes")
                h.update(chunk)
                buffered.append(chunk)
                held += len(chunk)
                if held > UPLOAD_BUFFER:
                    if new is None:
                        new = await self._begin(kind, key, rel)
                    await trio.to_thread.run_sync(new.write, buffered)
                    buffered, held = [], 0
            if size is not None and got != size:
                raise Rejected("size_mismatch", f"{kind}/{key}/{rel}: got {got} bytes, "
                               f"expected {size}")
            digest = h.digest()
            if sha256 is not None and digest != sha256:
                raise Rejected("hash_mismatch", f"{kind}/{key}/{rel}: bytes do not hash to "
                               "the sender's SHA-256")
            if kind == fs.CHAT and digest != ch.parse_chat_rel(key, rel).hash:
                raise Rejected("hash_mismatch", f"{key}/chat/{rel}: bytes do not hash to "
                               "the name")
            if new is None:
                return await self.store(kind, key, rel, buffered, got)
            self.received.add(self.echo_key(kind, key, rel))

            def finish() -> str:
                new.write(buffered)
                try:
                    new.commit()
                    return "stored"
                except FileExists:
                    return "have"

            status = await trio.to_thread.run_sync(finish)
            return self._stored(kind, key, rel, got, status)
        except Rejected as e:
            self.metrics.received.labels(kind, e.reason).inc()
            raise
        finally:
            if new is not None:
                await trio.to_thread.run_sync(new.abort)

    async def _begin(self, kind: str, key: str, rel: str):
        try:
            return await trio.to_thread.run_sync(self.tree.begin_new,
                                                 entry_parts(kind, key, rel))
        except RefusedPath as e:
            log.warning("not writing %s/%s/%s: %s", kind, key, rel, e)
            raise Rejected("refused", str(e)) from None

    def _stored(self, kind: str, key: str, rel: str, size: int, status: str) -> str:
        if self.index.add(kind, key, rel, size) and status == "stored":
            self.metrics.bytes.labels("in").inc(size)
            self.metrics.set_counts(self.index.counts())
        self.metrics.received.labels(kind, status).inc()
        return status

    async def accept_many(self, kind: str, key: str,
                          items: list[tuple[str, bytes, int | None]]) -> list[tuple[str, str]]:
        """Small files that came whole (a batch fetch, each already checked against the
        sender's SHA-256): (rel, status) each, status `stored`, `have`, `tombstoned` or
        the reason it was refused. One thread hop writes them all; each directory is
        fsynced once."""
        out: list[tuple[str, str]] = []
        todo: list[tuple[str, bytes]] = []
        for rel, data, size in items:
            status = self.offer_status(kind, key, rel)
            if status == "want" and size is not None and len(data) != size:
                status = "size_mismatch"
            elif status == "want" and kind == fs.CHAT and not (
                    rel.endswith(ch.BATCH_SUFFIX)
                    and ch.matches_name(ch.parse_chat_rel(key, rel), data)):
                status = "hash_mismatch"
            if status == "want":
                todo.append((rel, data))
                self.received.add(self.echo_key(kind, key, rel))
            else:
                out.append((rel, status))

        def write() -> list[tuple[str, str]]:
            done = []
            dirs = set()
            for rel, data in todo:
                parts = entry_parts(kind, key, rel)
                try:
                    self.tree.write_new(parts, [data], sync_dir=False)
                    done.append((rel, "stored"))
                    dirs.add(tuple(parts[:-1]))
                except FileExists:
                    done.append((rel, "have"))
                except RefusedPath as e:
                    log.warning("not writing %s/%s/%s: %s", kind, key, rel, e)
                    done.append((rel, "refused"))
            self.tree.sync_dirs(dirs)
            return done

        if todo:
            sizes = dict(todo)
            for rel, status in await trio.to_thread.run_sync(write):
                if status in ("stored", "have"):
                    self._stored(kind, key, rel, len(sizes[rel]), status)
                else:
                    self.metrics.received.labels(kind, status).inc()
                out.append((rel, status))
        for _, status in out:
            if status in ("size_mismatch", "hash_mismatch", "tombstoned"):
                self.metrics.received.labels(kind, status).inc()
        return out

    async def store(self, kind: str, key: str, rel: str, parts: list[bytes], size: int) -> str:
        self.received.add(self.echo_key(kind, key, rel))
        try:
            await trio.to_thread.run_sync(self.tree.write_new, entry_parts(kind, key, rel),
                                          parts)
            status = "stored"
        except FileExists:
            status = "have"
        except RefusedPath as e:
            self.metrics.received.labels(kind, "refused").inc()
            log.warning("not writing %s/%s/%s: %s", kind, key, rel, e)
            raise Rejected("refused", str(e)) from None
        return self._stored(kind, key, rel, size, status)

    async def accept_tombstone(self, channel: str, rel: str, source: str) -> str:
        self.received.add(self.echo_key(fs.CHAT, channel, rel))
        try:
            created = await trio.to_thread.run_sync(
                self.tree.create_empty, entry_parts(fs.CHAT, channel, rel))
        except RefusedPath as e:
            raise Rejected("refused", str(e)) from None
        self.index.add(fs.CHAT, channel, rel, 0)
        status = "stored" if created else "have"
        if created:
            log.info("chat tombstone %s/chat/%s (from %s)", channel, rel, source)
        self.metrics.received.labels(fs.CHAT, status).inc()
        return status
