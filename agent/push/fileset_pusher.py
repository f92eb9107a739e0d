"""Push of chat batches and extras files as they appear: the fast path.

One bounded queue per segsync peer (a wubloader node is never pushed to; a full
queue drops and counts: anti-entropy repairs), a few workers each: offer
(`POST /v1/file-offer`), and on `want` the bytes (`PUT /v1/file/...` with their
SHA-256). A failed push is retried with backoff a few times, then left to the pull.
"""

from __future__ import annotations

import hashlib
import logging

import trio

from protocol.backoff import Backoff
from protocol.peerkind import PeerKind

from ..archive.filesets.ingest import FileSetMetrics
from ..archive.filesets.tree import RefusedPath, SafeTree, entry_parts, sha256_file
from ..peers import fileset_client as fc
from ..peers.peer_set import Peer, follow_peers
from ..peers.transport import PeerError

log = logging.getLogger(__name__)

QUEUE = 10_000
WORKERS = 4
ATTEMPTS = 4
SMALL = 1024 * 1024  # read whole; larger files stream

Item = tuple[str, str, str, int]  # kind, key, rel, size


class FileSetPusher:
    def __init__(self, peers, clients, kinds, tree: SafeTree, metrics: FileSetMetrics) -> None:
        self.peers = peers
        self.clients = clients
        self.kinds = kinds
        self.tree = tree
        self.metrics = metrics
        self.queues: dict[Peer, trio.MemorySendChannel] = {}
        self.depth: dict[Peer, int] = {}
        self.dropped: dict[Peer, int] = {}

    def push(self, kind: str, key: str, rel: str, size: int) -> None:
        for peer, send in list(self.queues.items()):
            try:
                send.send_nowait((kind, key, rel, size))
                self.depth[peer] = self.depth.get(peer, 0) + 1
            except trio.WouldBlock:
                self.dropped[peer] = self.dropped.get(peer, 0) + 1
                self.metrics.pushes.labels(peer.name, kind, "dropped").inc()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await follow_peers(self.peers, self._run_peer, task_status=task_status)

    async def _run_peer(self, peer: Peer, at_start: bool) -> None:
        if peer.kind is PeerKind.WUBLOADER:
            return
        send, receive = trio.open_memory_channel(QUEUE)
        self.queues[peer] = send
        try:
            async with self.clients.client(peer, concurrency=WORKERS) as client:
                async with trio.open_nursery() as nursery:
                    for _ in range(WORKERS):
                        nursery.start_soon(self._worker, peer, client, receive.clone())
        finally:
            self.queues.pop(peer, None)
            self.depth.pop(peer, None)

    async def _worker(self, peer: Peer, client, receive) -> None:
        backoff = Backoff(base=0.2, cap=10.0)
        async with receive:
            async for item in receive:
                self.depth[peer] = max(0, self.depth.get(peer, 1) - 1)
                for attempt in range(ATTEMPTS):
                    await trio.sleep(backoff.wait_time(trio.current_time()))
                    try:
                        kind = await self.kinds.kind(peer)
                        if kind is PeerKind.WUBLOADER:
                            break
                        outcome = await self._push_one(client, item)
                        backoff.success()
                        self.metrics.pushes.labels(peer.name, item[0], outcome).inc()
                        break
                    except PeerError as e:
                        if e.status in (404, 405):  # a peer from before file sets
                            self.metrics.pushes.labels(peer.name, item[0], "unsupported").inc()
                            break
                        backoff.failure(trio.current_time())
                        if attempt == ATTEMPTS - 1:
                            self.metrics.pushes.labels(peer.name, item[0], "failed").inc()
                            log.info("push of %s %s/%s to %s failed: %s (left to backfill)",
                                     item[0], item[1], item[2], peer, e)

    async def _push_one(self, client, item: Item) -> str:
        kind, key, rel, size = item
        status = await fc.offer(client, kind, key, rel, size)
        if status != "want":
            return status
        parts = entry_parts(kind, key, rel)
        if size <= SMALL:
            try:
                data = await trio.to_thread.run_sync(self.tree.read_all, parts, SMALL)
            except (FileNotFoundError, RefusedPath):
                return "gone"  # merged away meanwhile
            ack = await fc.upload(client, kind, key, rel, data,
                                  hashlib.sha256(data).digest())
            self.metrics.bytes.labels("pushed").inc(len(data))
            return ack
        try:
            f = await trio.to_thread.run_sync(self.tree.open_read, parts)
        except (FileNotFoundError, RefusedPath):
            return "gone"
        try:
            def hash_it():
                digest, n = sha256_file(f)
                f.seek(0)
                return digest, n
            digest, n = await trio.to_thread.run_sync(hash_it)
            ack = await fc.upload_file(client, kind, key, rel, f, n, digest)
            self.metrics.bytes.labels("pushed").inc(n)
            return ack
        finally:
            f.close()
