"""Anti-entropy for chat batches and extras files: pull what push missed.

From a segsync peer, top-down like segments: set digests (one request when in
sync), then bucket digests of a set that differs, then the entries of the buckets
that differ (paged), then what `protocol.filesets.plan_entries` says we lack:
small files in batches (`POST /v1/file-fetch`), large ones one GET each. From a
wubloader node: its chat hours listed like its video hours (`/files/CHANNEL/chat/
HOUR`), its `GET /extras/DIR` listing, each file one `GET /segments/...`.
Chat has no recent window; a batch gone by the time we ask (404: merged away) is
not an error; hostile paths are refused with a log line and write nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from protocol import endpoints as ep
from protocol.filesets import batch as filebatch
from protocol.filesets import sets as fs
from protocol.legacy import hours_to_list, valid_components
from protocol.peerkind import PeerKind

from ..archive.filesets.index import FileSetIndex
from ..archive.filesets.ingest import FileSetIngest, FileSetMetrics, Rejected
from ..peers import fileset_client as fc
from ..peers.transport import PeerError

log = logging.getLogger(__name__)

MAX_REFUSALS_LOGGED = 20  # per set and round; the rest are counted


@dataclass
class FileRoundStats:
    sets_compared: int = 0
    sets_differing: int = 0
    buckets_listed: int = 0
    fetched: int = 0
    tombstones: int = 0
    gone: int = 0  # listed, then 404 (a merged chat batch)
    refused: int = 0  # hostile or malformed paths
    failed: int = 0
    ignored: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def moved(self) -> bool:
        return bool(self.fetched or self.tombstones or self.refused or self.failed
                    or self.errors)


class FileSetPuller:
    def __init__(self, index: FileSetIndex, ingest: FileSetIngest, metrics: FileSetMetrics,
                 extras_dirs, max_concurrency: int = 5) -> None:
        self.index = index
        self.ingest = ingest
        self.metrics = metrics
        self.extras_dirs = tuple(extras_dirs)
        self.limiter = trio.CapacityLimiter(max(1, max_concurrency))
        self.workers = max(1, max_concurrency) + 1  # per set: one more than may download
        self.last_rounds: dict[str, FileRoundStats] = {}  # by peer URL

    async def round_with(self, peer, kind: PeerKind, clients, hours: tuple[str, str],
                         concurrency: int = 7) -> FileRoundStats:
        """One round of chat and extras with one peer, of the kind it is."""
        if kind is PeerKind.WUBLOADER:
            async with clients.wubloader_client(peer, concurrency=concurrency) as client:
                stats = await self.round_wubloader(client, peer.name, hours)
        else:
            async with clients.client(peer, concurrency=concurrency) as client:
                stats = await self.round_segsync(client, peer.name, hours)
        self.last_rounds[peer.url] = stats
        self.metrics.set_counts(self.index.counts())
        return stats

    # ---- segsync peers ----

    async def round_segsync(self, client, label: str, hours: tuple[str, str]
                            ) -> FileRoundStats:
        stats = FileRoundStats()
        first, last = hours
        try:
            remote = await fc.set_digests(client, first, last)
        except PeerError as e:
            if e.status in (404, 405):  # a segsync peer from before file sets
                return stats
            stats.errors.append(str(e))
            return stats
        local = {(k, key): d for k, key, _, d in self.index.set_digests(first, last)}
        for kind, key, _, digest in remote.sets:
            if kind == fs.EXTRAS and key not in self.extras_dirs:
                continue
            stats.sets_compared += 1
            if local.get((kind, key)) == digest:
                continue
            stats.sets_differing += 1
            try:
                await self._compare_set(client, label, kind, key, hours, stats)
            except PeerError as e:
                stats.errors.append(f"{kind} {key}: {e}")
        self._log(label, stats)
        return stats

    async def _compare_set(self, client, label: str, kind: str, key: str,
                           hours: tuple[str, str], stats: FileRoundStats) -> None:
        remote = await fc.bucket_digests(client, kind, key, *hours)
        local = {b: d for b, _, d in self.index.bucket_digests(kind, key, *hours)}
        counts = {b: n for b, n, d in remote.buckets if local.get(b) != d}
        for group in fs.group_buckets(counts):
            stats.buckets_listed += len(group)
            async for page in fc.entries(client, kind, key, group):
                plan = fs.plan_entries(kind, key, page, self.index.local(kind, key),
                                       self.index.vanished(kind, key))
                await self._carry_out(label, kind, key, plan, stats, client, segsync=True)

    # ---- wubloader nodes ----

    async def round_wubloader(self, client, label: str, hours: tuple[str, str]
                              ) -> FileRoundStats:
        stats = FileRoundStats()
        try:
            channels = valid_components(await client.channels())
            for channel in channels:
                if not await fc.legacy_has_chat(client, channel):
                    continue
                stats.sets_compared += 1
                try:
                    listed = hours_to_list(await client.hours(channel, "chat"), *hours)
                    for hour in listed:
                        names = await client.hour_listing(channel, "chat", hour)
                        stats.buckets_listed += 1
                        plan = fs.plan_entries(fs.CHAT, channel,
                                               fs.legacy_chat_rels(hour, names),
                                               self.index.local(fs.CHAT, channel),
                                               self.index.vanished(fs.CHAT, channel))
                        await self._carry_out(label, fs.CHAT, channel, plan, stats, client,
                                              segsync=False)
                except PeerError as e:
                    stats.errors.append(f"chat {channel}: {e}")
        except PeerError as e:
            stats.errors.append(str(e))
        for directory in self.extras_dirs:
            stats.sets_compared += 1
            try:
                paths = await fc.legacy_extras(client, directory)
                stats.buckets_listed += 1
                plan = fs.plan_entries(fs.EXTRAS, directory, [(p, None) for p in paths],
                                       self.index.local(fs.EXTRAS, directory))
                await self._carry_out(label, fs.EXTRAS, directory, plan, stats, client,
                                      segsync=False)
            except PeerError as e:
                stats.errors.append(f"extras {directory}: {e}")
        self._log(label, stats)
        return stats

    # ---- carrying out a plan ----

    async def _carry_out(self, label: str, kind: str, key: str, plan: fs.FilePlan,
                         stats: FileRoundStats, client, segsync: bool) -> None:
        stats.ignored += plan.ignored
        for i, (path, why) in enumerate(plan.refused):
            if i < MAX_REFUSALS_LOGGED:
                log.warning("refusing %s %s path %r listed by %s: %s", kind, key, path,
                            label, why)
            self.metrics.refused.labels(kind).inc()
        if len(plan.refused) > MAX_REFUSALS_LOGGED:
            log.warning("refusing %d more %s %s paths listed by %s",
                        len(plan.refused) - MAX_REFUSALS_LOGGED, kind, key, label)
        stats.refused += len(plan.refused)
        for rel in plan.tombstones:
            try:
                await self.ingest.accept_tombstone(key, rel, f"pull {label}")
                stats.tombstones += 1
            except (Rejected, OSError) as e:
                stats.failed += 1
                log.error("storing chat tombstone %s/chat/%s: %s", key, rel, e)
        if not plan.fetch:
            return
        if segsync:
            batches, singles = filebatch.fetch_batches(plan.fetch)
        else:
            batches, singles = [], [rel for rel, _ in plan.fetch]
        sizes = dict(plan.fetch)
        jobs = [(True, batch) for batch in batches] + [(False, rel) for rel in singles]
        # a few workers take the jobs in turn: a listing of 500,000 paths is not
        # 500,000 tasks at once
        send, receive = trio.open_memory_channel(0)

        async def worker(receive) -> None:
            async with receive:
                async for is_batch, job in receive:
                    if is_batch:
                        await self._fetch_batch(client, label, kind, key, job, sizes, stats)
                    else:
                        await self._fetch_one(client, label, kind, key, job,
                                              sizes.get(job), stats, segsync)

        async with trio.open_nursery() as nursery:
            for _ in range(min(len(jobs), self.workers)):
                nursery.start_soon(worker, receive.clone())
            receive.close()
            async with send:
                for job in jobs:
                    await send.send(job)

    def _outcome(self, label: str, kind: str, outcome: str) -> None:
        self.metrics.pulls.labels(label, kind, outcome).inc()

    async def _fetch_batch(self, client, label: str, kind: str, key: str, rels: list[str],
                           sizes: dict, stats: FileRoundStats) -> None:
        async with self.limiter:
            try:
                items = await fc.fetch_batch(client, kind, key, rels)
            except PeerError as e:
                if e.status in (404, 405):  # no batch fetch: one by one
                    items = None
                else:
                    stats.failed += len(rels)
                    stats.errors.append(str(e))
                    return
        if items is None:
            for rel in rels:
                await self._fetch_one(client, label, kind, key, rel, sizes.get(rel), stats,
                                      True)
            return
        whole = []
        for item in items:
            if item.data is None:
                if item.reason == "hash_mismatch":
                    stats.failed += 1
                    self._outcome(label, kind, "hash_mismatch")
                else:
                    stats.gone += 1
                    self._outcome(label, kind, "gone")
                continue
            whole.append((item.path, item.data, sizes.get(item.path)))
        try:
            stored = await self.ingest.accept_many(kind, key, whole)
        except OSError as e:
            stats.failed += len(whole)
            self._outcome(label, kind, "storage_error")
            log.error("storing %d %s %s files: %s", len(whole), kind, key, e)
            return
        sent = {rel: data for rel, data, _ in whole}
        for rel, status in stored:
            self._outcome(label, kind, status)
            if status == "stored":
                stats.fetched += 1
                stats.bytes += len(sent[rel])
            elif status not in ("have", "tombstoned"):
                stats.failed += 1
                log.warning("not storing %s %s/%s from %s: %s", kind, key, rel, label, status)

    async def _fetch_one(self, client, label: str, kind: str, key: str, rel: str,
                         size: int | None, stats: FileRoundStats, segsync: bool) -> None:
        url = (ep.file_url(kind, key, rel) if segsync else
               ep.legacy_file_url(f"{key}/chat/{rel}" if kind == fs.CHAT else f"{key}/{rel}"))
        async with self.limiter:
            try:
                async with fc.download(client, url, f"{kind} {key}/{rel}",
                                       size if size is not None else fs.MAX_FILE_BYTES
                                       ) as (declared, sha, chunks):
                    if size is not None and declared is not None and declared != size:
                        stats.failed += 1
                        self._outcome(label, kind, "size_mismatch")
                        return
                    await self._store(label, kind, key, rel,
                                      size if size is not None else declared,
                                      sha if segsync else None, chunks, stats)
            except PeerError as e:
                if e.status == 404:  # merged away (chat) or gone since the listing
                    stats.gone += 1
                    self._outcome(label, kind, "gone")
                    log.debug("%s %s/%s: gone from %s", kind, key, rel, label)
                    return
                stats.failed += 1
                self._outcome(label, kind, "error")
                stats.errors.append(str(e))

    async def _store(self, label: str, kind: str, key: str, rel: str, size: int | None,
                     sha: bytes | None, chunks, stats: FileRoundStats) -> None:
        try:
            status = await self.ingest.accept(kind, key, rel, size, sha, chunks,
                                              f"pull {label}")
        except Rejected as e:
            stats.failed += 1
            self._outcome(label, kind, e.reason)
            log.warning("not storing %s %s/%s from %s: %s", kind, key, rel, label, e)
            return
        except OSError as e:
            stats.failed += 1
            self._outcome(label, kind, "storage_error")
            log.error("storing %s %s/%s: %s", kind, key, rel, e)
            return
        self._outcome(label, kind, status)
        if status == "stored":
            stats.fetched += 1
            stats.bytes += self.index.size(kind, key, rel) or 0

    def _log(self, label: str, s: FileRoundStats) -> None:
        if not s.moved:
            log.debug("file sets from %s: in sync (%d sets compared)", label, s.sets_compared)
            return
        log.log(logging.WARNING if s.errors else logging.INFO,
                "file sets from %s: sets compared %d, differing %d, buckets listed %d, "
                "fetched %d, tombstones %d, gone %d, refused %d, failed %d, bytes %d%s",
                label, s.sets_compared, s.sets_differing, s.buckets_listed, s.fetched,
                s.tombstones, s.gone, s.refused, s.failed, s.bytes,
                f"; error: {s.errors[0]}" if s.errors else "")

