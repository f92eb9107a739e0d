"""Backfill downloads: fetch what a comparison found missing, for every peer's rounds.

One `Downloads` per node owns the one limiter (`max_concurrency` exchanges at once,
shared by all peers) and the segments in flight, so a segment two peers offer is
fetched once. Each unit of work runs a bounded number of workers; a worker takes the
limiter with `async with` for each exchange (a batch fetch, or one segment from a
peer without batch fetch). What the peer sends goes through `Ingest` (verified,
atomic); what happened is counted in the unit's `PairStats`.

A segment is committed (fsync, rename, index) in a task of its own while the next one
streams in, up to COMMITS_IN_FLIGHT for the node: fsyncs that run side by side share
the filesystem's journal commits (measured here: 200 x 1 MiB written and fsynced one
at a time 1.6 s, five at a time 0.23 s), and the stream does not wait for the disk.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import trio

from protocol.names import Kind, SegmentName
from protocol.replication import fetch_batches

from ..archive.index import ArchiveIndex
from ..archive.ingest import Ingest, ReceivedSegment
from ..archive.store import Store, WriteRejected
from ..peers.client import PeerClient, PeerError
from ..peers.legacy_client import LegacyClient
from ..peers.peer_set import Peer, PeerCapabilities
from ..telemetry.metrics import Metrics
from ..telemetry.progress import Progress
from .round_stats import PairStats

log = logging.getLogger(__name__)

MAX_DOWNLOAD_ERRORS = 5  # broken exchanges in a row: stop this unit, retry next round
FETCH_BATCH = 32  # most segments asked in one batch fetch (protocol limit: 64)
COMMITS_IN_FLIGHT = 16  # verified segments being fsynced and renamed at once, per node
# segments a peer without batch fetch (a wubloader node: one GET each) is asked for at
# once within one exchange slot: its GETs are small exchanges, and a batch fetch keeps
# a whole batch coming in one. A client of such a peer needs this many connections
# per exchange slot (`connections_for`).
GETS_PER_EXCHANGE = 2


def connections_for(max_concurrency: int) -> int:
    """Connections a pull client needs: every exchange slot's GETs, and two more (the
    listings and digests of the round itself)."""
    return max_concurrency * GETS_PER_EXCHANGE + 2


class PeerFetch:
    """One unit's view of its peer: the client (of a segsync peer or a wubloader node),
    what the peer supports, its label."""

    def __init__(self, client: PeerClient | LegacyClient, capabilities: PeerCapabilities,
                 peer: Peer, stats: PairStats, progress: Progress | None) -> None:
        self.client = client
        self.capabilities = capabilities
        self.peer = peer
        self.label = peer.name  # metric label
        self.stats = stats
        self.progress = progress


class Downloads:
    def __init__(self, ingest: Ingest, store: Store, index: ArchiveIndex, metrics: Metrics,
                 max_concurrency: int, max_segment_bytes: int) -> None:
        self.ingest = ingest
        self.store = store
        self.index = index
        self.metrics = metrics
        self.max_concurrency = max_concurrency
        self.max_segment_bytes = max_segment_bytes
        self.limiter = trio.Semaphore(max_concurrency)
        # verified segments waiting for their fsync and rename (each holds an open
        # file, no bytes in memory)
        self.commit_slots = trio.Semaphore(COMMITS_IN_FLIGHT)
        self.in_flight: dict[str, trio.Event] = {}  # segment path -> download finished

    async def fetch(self, peer: PeerFetch, names: list[SegmentName]) -> None:
        """Download `names` from the peer in batches; stops early once the unit failed
        (the peer stopped answering: the rest waits for the next round)."""
        batches = collections.deque(fetch_batches(names, self.max_concurrency, FETCH_BATCH))
        async with trio.open_nursery() as nursery:
            for _ in range(min(len(batches), self.max_concurrency)):
                nursery.start_soon(self._worker, peer, batches)

    async def _worker(self, peer: PeerFetch, batches: collections.deque) -> None:
        while batches and peer.stats.error is None:
            batch = batches.popleft()
            for name in await self._batch(peer, batch):
                await self._after_other(peer, name)

    def _have(self, name: SegmentName) -> bool:
        return self.index.has(name, Kind.SEGMENT) or self.index.has(name, Kind.TOMBSTONE)

    async def _batch(self, peer: PeerFetch, names: list[SegmentName]) -> list[SegmentName]:
        """Fetch the batch's segments nobody is fetching; return those another peer's
        round is fetching right now (they are waited for, not downloaded twice)."""
        async with self.limiter:
            if peer.stats.error is not None:
                return []
            mine, others = [], []
            for name in names:
                if name.path in self.in_flight:
                    others.append(name)
                elif self._have(name):
                    peer.stats.elsewhere += 1
                else:
                    mine.append(name)
            done = {name.path: trio.Event() for name in mine}
            self.in_flight.update(done)
            try:
                if mine:
                    await self._download_batch(peer, mine)
            finally:
                for path, event in done.items():
                    del self.in_flight[path]
                    event.set()
        return others

    async def _after_other(self, peer: PeerFetch, name: SegmentName) -> None:
        """A segment another round was fetching: once it is done, fetch it here only
        if that one failed."""
        while True:
            other = self.in_flight.get(name.path)
            if other is not None:
                await other.wait()
                continue
            async with self.limiter:
                if name.path in self.in_flight:
                    continue  # claimed again while this waited for the limiter
                if peer.stats.error is not None:
                    return
                if self._have(name):
                    peer.stats.elsewhere += 1
                    return
                done = self.in_flight[name.path] = trio.Event()
                try:
                    await self._download(peer, name)
                finally:
                    del self.in_flight[name.path]
                    done.set()
                return

    async def _download_batch(self, peer: PeerFetch, names: list[SegmentName]) -> None:
        """Fetch `names` in one response; one by one from a peer without batch fetch.
        Either way the hour directories are fsynced once for the whole batch, after
        every segment of it was committed."""
        stored_dirs: set[Path] = set()
        try:
            async with trio.open_nursery() as commits:
                await self._stream_batch(peer, names, _Commits(commits, stored_dirs))
        finally:
            # one directory fsync per hour for the whole batch, not one per segment
            if stored_dirs:
                with trio.CancelScope(shield=True):
                    try:
                        await trio.to_thread.run_sync(self.store.sync_dirs, stored_dirs)
                    except OSError as e:  # the files are there; only the renames may not last
                        log.error("backfill: syncing hour directories: %s", e)

    async def _stream_batch(self, peer: PeerFetch, names: list[SegmentName],
                            commits: "_Commits") -> None:
        if peer.capabilities.batch_fetch is False:
            await self._download_each(peer, names, commits)
            return
        settled = 0
        try:
            if isinstance(peer.client, PeerClient) and peer.client.fetch_target is not None:
                async def settle(name: SegmentName, outcome: object, unpaced: int) -> None:
                    nonlocal settled
                    await self._settle_threaded(peer, name, outcome, unpaced, commits)
                    settled += 1

                await peer.client.fetch_into(
                    names, self.max_segment_bytes,
                    lambda name, size: self.ingest.receiver(name, size, "pull"), settle)
            else:
                async with peer.client.fetch(names, self.max_segment_bytes) as items:
                    async for name, size, chunks in items:
                        if chunks is None:
                            await self._settle(peer, name, None, commits)
                        else:
                            await self._store(peer, name, size, chunks, commits)
                        settled += 1
            peer.capabilities.batch_fetch = True
        except PeerError as e:
            if settled == 0 and e.status in (404, 405):
                log.info("backfill: %s has no batch fetch; fetching one by one", peer.peer)
                peer.capabilities.batch_fetch = False
                await self._download_each(peer, names, commits)
                return
            # every segment not settled failed, but as one exchange with the peer: a
            # single broken response must not count as several failures in a row
            for name in names[settled:]:
                self._segment_failed(peer, name, e)
            self._exchange_failed(peer.stats, e)

    async def _download_each(self, peer: PeerFetch, names: list[SegmentName],
                             commits: "_Commits") -> None:
        """One GET per segment, GETS_PER_EXCHANGE at a time, in order: in worker
        threads where the client connects directly, else on httpx."""
        if peer.client.fetch_target is not None:
            await peer.client.get_each_into(
                names, GETS_PER_EXCHANGE, self.max_segment_bytes,
                lambda name, size: self.ingest.receiver(name, size, "pull"),
                lambda name, outcome, unpaced: self._settle_threaded(
                    peer, name, outcome, unpaced, commits),
                keep_going=lambda: peer.stats.error is None)
            return
        pending = collections.deque(names)

        async def getter() -> None:
            while pending and peer.stats.error is None:
                await self._download(peer, pending.popleft(), commits)

        async with trio.open_nursery() as nursery:
            for _ in range(min(GETS_PER_EXCHANGE, len(pending))):
                nursery.start_soon(getter)

    async def _settle_threaded(self, peer: PeerFetch, name: SegmentName, outcome: object,
                               unpaced: int, commits: "_Commits") -> None:
        """A segment a worker thread finished (`agent.peers.threaded_exchange.Settle`):
        its bytes not yet counted are taken from the download limit, then it is
        settled; a PeerError (its own GET failed) counts as a broken exchange."""
        try:
            if unpaced:  # counted now (no limit was set while they came)
                await peer.client.pacing.receive(unpaced, name)
        except BaseException:  # cancelled: a verified temp file goes
            if isinstance(outcome, ReceivedSegment):
                outcome.abort()
            raise
        if isinstance(outcome, PeerError):
            self._segment_failed(peer, name, outcome)
            self._exchange_failed(peer.stats, outcome)
            return
        await self._settle(peer, name, outcome, commits)

    async def _download(self, peer: PeerFetch, name: SegmentName,
                        commits: "_Commits | None" = None) -> None:
        """One segment by itself (committed in `commits`, else before this returns,
        its directory fsynced too)."""
        try:
            async with peer.client.download(name, self.max_segment_bytes) as (size, chunks):
                await self._store(peer, name, size, chunks, commits)
        except PeerError as e:
            self._segment_failed(peer, name, e)
            self._exchange_failed(peer.stats, e)

    def _segment_failed(self, peer: PeerFetch, name: SegmentName, e: PeerError) -> None:
        peer.stats.failed += 1
        log.info("backfill: fetching %s: %s", name.path, e)
        self.metrics.pulls.labels(peer.label, "segment", "error").inc()

    @staticmethod
    def _exchange_failed(stats: PairStats, e: PeerError) -> None:
        """One more exchange with the peer in a row that broke; enough of them end the
        unit for this round."""
        stats.download_errors += 1
        if stats.download_errors >= MAX_DOWNLOAD_ERRORS and stats.error is None:
            stats.error = f"{stats.download_errors} downloads in a row broke: {e}"

    async def _store(self, peer: PeerFetch, name: SegmentName, size: int | None, chunks,
                     commits: "_Commits | None") -> None:
        """Receive one segment as its bytes arrive (verified into its temp file), then
        settle it. A PeerError (the transfer broke) propagates; what the store refuses
        is counted."""
        try:
            received = await self.ingest.receive_segment(name, size, chunks, source="pull")
        except (WriteRejected, OSError) as e:
            received = e
        await self._settle(peer, name, received, commits)

    async def _settle(self, peer: PeerFetch, name: SegmentName, outcome: object,
                      commits: "_Commits | None") -> None:
        """What became of one segment of a download: None (the peer does not serve it,
        gone since its listing), an exception (its bytes refused, or the disk failed),
        have / tombstoned, or a verified `ReceivedSegment`, committed in `commits`
        (else here, its directory fsynced too) and counted."""
        if outcome is None:
            peer.stats.failed += 1
            self.metrics.pulls.labels(peer.label, "segment", "missing").inc()
            return
        if isinstance(outcome, Exception):
            self._refused(peer, name, outcome)
            return
        peer.stats.download_errors = 0  # the peer answered: it is up
        if isinstance(outcome, str):
            self._count(peer, name, outcome, None)
            return
        assert isinstance(outcome, ReceivedSegment)
        received = outcome
        if commits is None:
            await self._commit(peer, name, received, None, sync_dir=True)
            return
        try:
            await self.commit_slots.acquire()
        except BaseException:  # cancelled while waiting: the verified temp file goes
            received.abort()
            raise
        try:
            commits.nursery.start_soon(self._commit, peer, name, received, commits, False)
        except BaseException:
            self.commit_slots.release()
            received.abort()
            raise

    async def _commit(self, peer: PeerFetch, name: SegmentName, received: ReceivedSegment,
                      commits: "_Commits | None", sync_dir: bool) -> None:
        """Make a received segment visible and count it; holds a commit slot when
        `commits` is given. Shielded: a verified file is not left half-done."""
        try:
            with trio.CancelScope(shield=True):
                try:
                    status = await received.commit(sync_dir)
                except (WriteRejected, OSError) as e:
                    self._refused(peer, name, e)
                    return
                if status == "stored" and commits is not None:
                    commits.stored_dirs.add(self.store.path_of(name).parent)
                self._count(peer, name, status, received.size)
        finally:
            if commits is not None:
                self.commit_slots.release()

    def _refused(self, peer: PeerFetch, name: SegmentName, e: Exception) -> None:
        stats, pulls = peer.stats, self.metrics.pulls
        if isinstance(e, WriteRejected):
            stats.download_errors = 0  # the peer answered: it is up
            if e.reason == "hash_mismatch":
                stats.hash_mismatch += 1
                log.warning("backfill: %s served bytes that do not match %s",
                            peer.peer, name.path)
            elif e.reason == "tombstoned":
                stats.skipped_tombstoned += 1
            else:
                stats.failed += 1
                log.warning("backfill: %s from %s refused: %s", name.path, peer.peer, e)
            pulls.labels(peer.label, "segment", e.reason).inc()
            return
        stats.failed += 1
        log.error("backfill: storing %s: %s", name.path, e)
        pulls.labels(peer.label, "segment", "storage_error").inc()

    def _count(self, peer: PeerFetch, name: SegmentName, status: str, size: int | None
               ) -> None:
        stats = peer.stats
        self.metrics.pulls.labels(peer.label, "segment", status).inc()
        if status == "stored":
            assert size is not None
            stats.downloaded += 1
            stats.bytes += size
            if peer.progress is not None:
                peer.progress.fetched(size)
        elif status == "tombstoned":  # a tombstone arrived (by push) since the listing
            stats.skipped_tombstoned += 1
        else:
            stats.elsewhere += 1


class _Commits:
    """Where one batch's segments are committed: the nursery, and the hour
    directories to fsync once they all are."""

    def __init__(self, nursery: trio.Nursery, stored_dirs: set[Path]) -> None:
        self.nursery = nursery
        self.stored_dirs = stored_dirs
