"""Anti-entropy: pull whatever push missed, comparing digests top-down.

Per peer and round: one request for the pair digests over the hour range; each
(channel, quality) that differs is then a unit of work of its own: its hour digests,
the listing of each hour that differs, and the downloads of what is missing,
`max_concurrency` at a time per node (a segment two peers offer is fetched once).
The decisions (which pairs, which hours, what to fetch) are pure functions in
`protocol.replication`; this module only carries them out.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import trio

from protocol.backoff import Backoff, jittered
from protocol.digests import hour_range
from protocol.legacy import LEGACY
from protocol.names import Kind, SegmentName
from protocol.replication import (
    FetchPlan,
    differing_keys,
    fetch_batches,
    newest_first,
    plan_hour,
)

from .client import PeerClient, PeerError
from .legacy import LegacyPuller
from .legacy_client import LegacyClient
from .store import WriteRejected

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

PEER_LIST_POLL = 1.0  # seconds between checks of the peer list for added/removed peers
MAX_DOWNLOAD_ERRORS = 5  # broken exchanges in a row: stop this unit, retry next round
FETCH_BATCH = 32  # most segments asked in one batch fetch (protocol limit: 64)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class PairStats:
    """What one (peer, channel, quality) unit did in one round."""

    hours_compared: int = 0
    hours_listed: int = 0
    missing: int = 0
    downloaded: int = 0
    tombstones: int = 0
    skipped_recent: int = 0
    skipped_temp: int = 0
    skipped_tombstoned: int = 0
    hash_mismatch: int = 0
    failed: int = 0
    bytes: int = 0
    elsewhere: int = 0  # fetched from another peer meanwhile, or already here
    duration: float = 0.0
    error: str | None = None  # this unit failed; the next round retries it
    download_errors: int = 0  # broken exchanges in a row: a peer that stopped answering

    def add_plan(self, plan: FetchPlan) -> None:
        self.missing += len(plan.fetch)
        self.skipped_recent += plan.skipped_recent
        self.skipped_temp += plan.skipped_temp
        self.skipped_tombstoned += plan.skipped_tombstoned


@dataclass
class RoundResult:
    peer: str
    ok: bool = True
    error: str | None = None
    pairs_compared: int = 0
    pairs: dict[tuple[str, str], PairStats] = field(default_factory=dict)
    duration: float = 0.0

    def total(self, attr: str) -> int:
        return sum(getattr(s, attr) for s in self.pairs.values())

    @property
    def failures(self) -> int:
        return self.total("hash_mismatch") + self.total("failed") + (0 if self.ok else 1)


@dataclass
class PeerState:
    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=300.0))
    last_round: float | None = None  # wall clock of the last completed round
    last_result: RoundResult | None = None


class Progress:
    """Receives download progress; the one-shot command shows it as a bar."""

    def planned(self, segments: int, nbytes: int | None) -> None: ...
    def fetched(self, nbytes: int) -> None: ...


class Backfiller:
    def __init__(self, node: "Node", clock: Callable[[], dt.datetime] = utc_now,
                 rng: random.Random | None = None) -> None:
        self.node = node
        self.clock = clock
        self.rng = rng or random.Random()
        self.peers: dict[str, PeerState] = {}
        self.download_slots = trio.Semaphore(node.config.max_concurrency)
        self.in_flight: dict[str, trio.Event] = {}  # segment path -> download finished
        self.rounds_done = 0
        self.round_finished = trio.Event()
        self.legacy = LegacyPuller(node.index, self.store_tombstones, node.config.recent_window)

    def _peer_state(self, url: str) -> PeerState:
        state = self.peers.get(url)
        if state is None:  # a failing peer backs off up to --backoff-cap, like pushes
            cap = self.node.config.backoff_cap
            state = self.peers[url] = PeerState(Backoff(base=min(1.0, cap), cap=cap))
        return state

    def peer_status(self, url: str) -> dict:
        state = self.peers.get(url)
        result = state.last_result if state else None
        return {
            "last_round": state.last_round if state else None,
            "round_ok": result.ok if result else None,
            "round_error": result.error if result else None,
            "missing": result.total("missing") if result else None,
            "reachable": (result.ok if result else None),
        }

    async def run(self) -> None:
        """One loop per peer, so a slow, hanging or hostile peer never holds back the
        others' rounds; follows peer-list changes (a new peer's first round waits one
        interval, the peers known at start-up go at once)."""
        loops: dict[str, trio.CancelScope] = {}
        at_start = True
        async with trio.open_nursery() as nursery:
            while True:
                urls = self.node.peer_urls()
                for url in list(loops):
                    if url not in urls:
                        loops.pop(url).cancel()
                        self.peers.pop(url, None)
                for url in urls:
                    if url not in loops:
                        loops[url] = trio.CancelScope()
                        nursery.start_soon(self._peer_loop, url, loops[url], at_start)
                at_start = False
                await trio.sleep(PEER_LIST_POLL)

    async def _peer_loop(self, url: str, scope: trio.CancelScope, start_now: bool) -> None:
        interval = self.node.config.backfill_interval
        with scope:
            if not start_now:
                await trio.sleep(jittered(interval, 0.2, self.rng))
            while True:
                state = self._peer_state(url)
                await trio.sleep(state.backoff.wait_time(trio.current_time()))
                await self.round_with_peer(url)
                self.rounds_done += 1
                self.round_finished.set()
                self.round_finished = trio.Event()
                await trio.sleep(jittered(interval, 0.2, self.rng))

    async def round_all(self, urls: list[str], progress: Progress | None = None
                        ) -> list[RoundResult]:
        """One round with each peer, peers in parallel; a failing peer costs only itself."""
        results: list[RoundResult] = []
        now_mono = trio.current_time()

        async def one(url: str) -> None:
            state = self._peer_state(url)
            if not state.backoff.ready(now_mono):
                log.debug("backfill: %s backing off", url)
                return
            results.append(await self.round_with_peer(url, progress))

        async with trio.open_nursery() as nursery:
            for url in urls:
                nursery.start_soon(one, url)
        for url in list(self.peers):
            if url not in urls:
                del self.peers[url]
        self.rounds_done += 1
        self.round_finished.set()
        self.round_finished = trio.Event()
        return results

    async def round_with_peer(self, url: str, progress: Progress | None = None) -> RoundResult:
        """One round with one peer: its pair digests, then each (channel, quality) that
        differs as a unit of work of its own (hour digests, listings, downloads)."""
        cfg = self.node.config
        metrics = self.node.metrics
        state = self._peer_state(url)
        result = RoundResult(url)
        started = trio.current_time()
        client: PeerClient | None = None
        try:
            now = self.clock()
            hours = hour_range(now, cfg.backfill_hours)
            if await self.node.peer_kinds.kind(url) == LEGACY:  # pulled by listings
                client = LegacyClient(url, cfg.max_concurrency + 2, timeout=cfg.request_timeout)
                pairs = await self.legacy.pairs(client)
                result.pairs_compared = len(pairs)
                compare = self.legacy.compare_pair
            else:
                client = PeerClient(url, cfg.token, cfg.node_name,
                                    concurrency=cfg.max_concurrency + 2,
                                    timeout=cfg.request_timeout)
                remote = await client.pair_digests(*hours)
                remote_pairs = {(c, q): d for c, q, d in remote.pairs}
                local_pairs = {(c, q): d for c, q, d in self.node.index.pair_digests(*hours)}
                result.pairs_compared = len(remote_pairs)
                pairs = differing_keys(local_pairs, remote_pairs)
                compare = self.compare_pair
            async with trio.open_nursery() as nursery:
                for pair in pairs:
                    stats = result.pairs[pair] = PairStats()
                    nursery.start_soon(self._pair_unit, client, pair, hours, now, stats,
                                       progress, compare)
        except PeerError as e:
            result.ok = False
            result.error = str(e)
            if e.status in (404, 405) and not self.node.peer_kinds.is_legacy(url):
                self.node.peer_kinds.forget(url)  # its /v1 is gone: probe it again
        finally:
            if client is not None:
                await client.aclose()
        errors = [s.error for s in result.pairs.values() if s.error]
        if result.ok and errors:
            result.ok = False
            result.error = f"{len(errors)} of {len(result.pairs)} pairs failed: {errors[0]}"
        result.duration = trio.current_time() - started
        metrics.round_duration.observe(result.duration)
        if result.ok:
            state.backoff.success()
            state.last_round = time.time()
            metrics.last_round.labels(url).set(state.last_round)
        else:
            delay = state.backoff.failure(trio.current_time())
            log.warning("backfill from %s failed: %s; next try in %.0fs", url, result.error, delay)
        state.last_result = result
        self._log_round(result)
        return result

    async def _pair_unit(self, client: PeerClient, pair: tuple[str, str], hours: tuple[str, str],
                         now: dt.datetime, stats: PairStats, progress: Progress | None,
                         compare) -> None:
        """Compare one (channel, quality) and fetch what it lacks; its failure is its own."""
        started = trio.current_time()
        try:
            plans = await compare(client, pair, hours, now, stats)
            if progress is not None and plans:
                progress.planned(sum(len(p.fetch) for p in plans), None)
            await self.fetch_plans(client, plans, stats, progress)
        except PeerError as e:
            stats.error = str(e)
        finally:
            stats.duration = trio.current_time() - started

    async def compare_pair(self, client: PeerClient, pair: tuple[str, str],
                           hours: tuple[str, str], now: dt.datetime, stats: PairStats
                           ) -> list[FetchPlan]:
        """Hour digests, then listings of the differing hours only, newest first.

        Tombstones the peer has and we lack are created here, without a download.
        """
        cfg = self.node.config
        index = self.node.index
        channel, quality = pair
        first, last = hours
        remote_hours = dict((await client.hour_digests(channel, quality, first, last)).hours)
        local_hours = dict(index.hour_digests(channel, quality, first, last))
        stats.hours_compared = len(remote_hours)
        plans = []
        for hour in newest_first(differing_keys(local_hours, remote_hours)):
            listing = await client.listing(channel, quality, hour)
            stats.hours_listed += 1
            plan = plan_hour(channel, quality, hour, listing.names,
                             index.names(channel, quality, hour), now, cfg.recent_window)
            stats.add_plan(plan)
            await self.store_tombstones(client.url, plan, stats)
            if plan.fetch:
                plans.append(plan)
        return plans

    async def store_tombstones(self, peer: str, plan: FetchPlan, stats: PairStats) -> None:
        """Create the tombstones a plan found at the peer: no download needed."""
        for name in plan.tombstones:
            try:
                status = await self.node.accept_tombstone(name, source=f"pull {peer}")
            except OSError as e:  # full disk: a later round retries
                stats.failed += 1
                log.error("backfill: storing %s: %s", name.tombstone_path, e)
                self.node.metrics.pulls.labels(peer, "tombstone", "storage_error").inc()
                continue
            self.node.metrics.pulls.labels(peer, "tombstone", status).inc()
            stats.tombstones += 1

    async def fetch_plans(self, client: PeerClient, plans: list[FetchPlan], stats: PairStats,
                          progress: Progress | None) -> None:
        """Download in batch fetches, `max_concurrency` at a time for the whole node (all
        peers share the slots)."""
        names = [name for plan in plans for name in plan.fetch]
        batches = fetch_batches(names, self.node.config.max_concurrency, FETCH_BATCH)
        async with trio.open_nursery() as nursery:
            for batch in batches:
                if not await self._download_slot(stats):
                    return
                nursery.start_soon(self._fetch_batch, client, batch, stats, progress)

    async def _download_slot(self, stats: PairStats) -> bool:
        """Take a download slot; False (holding none) if the unit failed meanwhile:
        the peer stopped answering, the rest waits for the next round."""
        await self.download_slots.acquire()
        if stats.error is not None:
            self.download_slots.release()
            return False
        return True

    async def _fetch_batch(self, client: PeerClient, names: list[SegmentName],
                           stats: PairStats, progress: Progress | None) -> None:
        """One batch; called holding a download slot, which it releases.

        Another peer's round may be fetching some of these segments: those wait for it
        (one at a time, afterwards) rather than being downloaded twice."""
        mine, others = [], []
        for name in names:
            if name.path in self.in_flight:
                others.append(name)
            elif self._have(name):
                stats.elsewhere += 1
            else:
                mine.append(name)
        done = {name.path: trio.Event() for name in mine}
        self.in_flight.update(done)
        try:
            if mine:
                await self._download_batch(client, mine, stats, progress)
        finally:
            for path, event in done.items():
                del self.in_flight[path]
                event.set()
            self.download_slots.release()
        for name in others:
            if not await self._download_slot(stats):
                return
            await self._fetch_one(client, name, stats, progress)

    def _have(self, name: SegmentName) -> bool:
        index = self.node.index
        return index.has(name, Kind.SEGMENT) or index.has(name, Kind.TOMBSTONE)

    async def _fetch_one(self, client: PeerClient, name: SegmentName, stats: PairStats,
                         progress: Progress | None) -> None:
        """One download; called holding a download slot, which it releases."""
        holding = True
        try:
            # Another peer's round may be fetching the same segment: wait for it rather
            # than download it twice, and fetch it here only if that one failed.
            while (other := self.in_flight.get(name.path)) is not None:
                self.download_slots.release()
                holding = False
                await other.wait()
                await self.download_slots.acquire()
                holding = True
            if self._have(name):
                stats.elsewhere += 1
                return
            done = self.in_flight[name.path] = trio.Event()
            try:
                await self._download(client, name, stats, progress)
            finally:
                del self.in_flight[name.path]
                done.set()
        finally:
            if holding:
                self.download_slots.release()

    async def _download_batch(self, client: PeerClient, names: list[SegmentName],
                              stats: PairStats, progress: Progress | None) -> None:
        """Fetch `names` in one response; one by one from a peer without batch fetch.
        Either way the hour directories are fsynced once for the whole batch."""
        stored_dirs: set = set()
        if not client.batch_fetch:
            try:
                for name in names:
                    if await self._download(client, name, stats, progress, sync_dir=False):
                        stored_dirs.add(self.node.store.path_of(name).parent)
            finally:
                await self._sync_dirs(stored_dirs)
            return
        settled = 0
        try:
            async with client.fetch(names, self.node.config.max_segment_bytes) as items:
                async for name, size, chunks in items:
                    if chunks is None:  # gone at the peer since its listing
                        stats.failed += 1
                        self.node.metrics.pulls.labels(client.url, "segment", "missing").inc()
                    elif await self._store(client, name, size, chunks, stats, progress,
                                           sync_dir=False):
                        stored_dirs.add(self.node.store.path_of(name).parent)
                    settled += 1
        except PeerError as e:
            if settled == 0 and e.status in (404, 405):
                log.info("backfill: %s has no batch fetch; fetching one by one", client.url)
                client.batch_fetch = False
                return await self._download_batch(client, names, stats, progress)
            # every segment not settled failed, but as one exchange with the peer: a
            # single broken response must not count as several failures in a row
            for name in names[settled:]:
                self._segment_failed(client, name, stats, e)
            self._exchange_failed(stats, e)
        finally:
            await self._sync_dirs(stored_dirs)

    async def _sync_dirs(self, stored_dirs: set) -> None:
        """One directory fsync per hour for a whole batch, not one per segment."""
        if stored_dirs:
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(self.node.store.sync_dirs, stored_dirs)
                except OSError as e:  # the files are there; only the renames may not last
                    log.error("backfill: syncing hour directories: %s", e)

    async def _download(self, client: PeerClient, name: SegmentName, stats: PairStats,
                        progress: Progress | None, sync_dir: bool = True) -> bool:
        """One segment by itself; True if it was stored."""
        try:
            async with client.download(name, self.node.config.max_segment_bytes) as (size, chunks):
                return await self._store(client, name, size, chunks, stats, progress,
                                         sync_dir=sync_dir)
        except PeerError as e:
            self._segment_failed(client, name, stats, e)
            self._exchange_failed(stats, e)
            return False

    def _segment_failed(self, client: PeerClient, name: SegmentName, stats: PairStats,
                        e: PeerError) -> None:
        stats.failed += 1
        log.info("backfill: fetching %s: %s", name.path, e)
        self.node.metrics.pulls.labels(client.url, "segment", "error").inc()

    @staticmethod
    def _exchange_failed(stats: PairStats, e: PeerError) -> None:
        """One more exchange with the peer in a row that broke; enough of them end the
        unit for this round."""
        stats.download_errors += 1
        if stats.download_errors >= MAX_DOWNLOAD_ERRORS and stats.error is None:
            stats.error = f"{stats.download_errors} downloads in a row broke: {e}"

    async def _store(self, client: PeerClient, name: SegmentName, size: int | None,
                     chunks, stats: PairStats, progress: Progress | None,
                     sync_dir: bool = True) -> bool:
        """Store one segment as its bytes arrive, and count what happened; True if it
        was stored. A PeerError (the transfer broke) propagates; what the store refuses
        is counted here."""
        metrics = self.node.metrics
        try:
            status = await self.node.accept_segment(name, size, chunks, source="pull",
                                                    sync_dir=sync_dir)
        except WriteRejected as e:
            stats.download_errors = 0  # the peer answered: it is up
            if e.reason == "hash_mismatch":
                stats.hash_mismatch += 1
                log.warning("backfill: %s served bytes that do not match %s",
                            client.url, name.path)
                metrics.pulls.labels(client.url, "segment", "hash_mismatch").inc()
            elif e.reason == "tombstoned":
                stats.skipped_tombstoned += 1
                metrics.pulls.labels(client.url, "segment", "tombstoned").inc()
            else:
                stats.failed += 1
                log.warning("backfill: %s from %s refused: %s", name.path, client.url, e)
                metrics.pulls.labels(client.url, "segment", e.reason).inc()
            return False
        except OSError as e:
            stats.failed += 1
            log.error("backfill: storing %s: %s", name.path, e)
            metrics.pulls.labels(client.url, "segment", "storage_error").inc()
            return False
        stats.download_errors = 0
        metrics.pulls.labels(client.url, "segment", status).inc()
        if status == "stored":
            if size is None:  # a peer that did not say: what was written
                size = (await trio.to_thread.run_sync(self.node.store.path_of(name).stat)).st_size
            stats.downloaded += 1
            stats.bytes += size
            if progress is not None:
                progress.fetched(size)
        elif status == "tombstoned":  # a tombstone arrived (by push) since the listing
            stats.skipped_tombstoned += 1
        else:
            stats.elsewhere += 1
        return status == "stored"

    def _log_round(self, r: RoundResult) -> None:
        """One line per peer and (channel, quality) that differed; in sync (or nothing to
        do) is debug."""
        if not r.pairs:
            if r.ok:
                log.debug("backfill from %s: in sync (%d pairs compared, %.3fs)",
                          r.peer, r.pairs_compared, r.duration)
            return
        for (channel, quality), s in sorted(r.pairs.items()):
            # a legacy peer's pairs are all compared each round: most have nothing to do
            idle = not (s.error or s.missing or s.tombstones or s.failed)
            log.log(
                logging.WARNING if s.error else logging.DEBUG if idle else logging.INFO,
                "backfill from %s %s/%s: hours compared %d, hours listed %d, missing %d, "
                "downloaded %d, tombstones %d, got elsewhere %d, skipped recent %d temp %d "
                "tombstoned %d hash-mismatch %d, failed %d, bytes %d, duration %.3fs%s",
                r.peer, channel, quality, s.hours_compared, s.hours_listed, s.missing,
                s.downloaded, s.tombstones, s.elsewhere, s.skipped_recent, s.skipped_temp,
                s.skipped_tombstoned, s.hash_mismatch, s.failed, s.bytes, s.duration,
                f"; error: {s.error}" if s.error else "",
            )
