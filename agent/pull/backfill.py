"""Anti-entropy: pull whatever push missed, comparing digests top-down.

Per peer and round: one request for the pair digests over the hour range; each
(channel, quality) that differs is then a unit of work of its own: its hour digests,
the listing of each hour that differs, and the downloads of what is missing (by
`agent.pull.downloads`, `max_concurrency` at a time for the node; a segment two peers
offer is fetched once). The decisions (which pairs, which hours, what to fetch) are
pure functions in `protocol.replication`; this module only carries them out.

A wubloader node has no digests: its rounds compare listings (`agent.pull.legacy`), and
feed the same downloads.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

import trio

from protocol.backoff import Backoff, StartupGrace, jittered
from protocol.digests import hour_range
from protocol.peerkind import PeerKind
from protocol.replication import FetchPlan, differing_keys, newest_first, plan_hour

from ..archive.index import ArchiveIndex
from ..archive.ingest import Ingest
from ..peers.client import ClientFactory, PeerError
from ..peers.kinds import PeerKinds
from ..peers.peer_set import Peer, PeerCapabilities, PeerSet, follow_peers
from ..telemetry.metrics import Metrics
from ..telemetry.progress import Progress
from .downloads import Downloads, PeerFetch, connections_for
from .fileset_puller import FileSetPuller
from .legacy import LegacyPuller
from .round_stats import PairStats, RoundResult

log = logging.getLogger(__name__)

# how one unit finds what to fetch: (fetch, pair, hours, now) -> plans
Compare = Callable[[PeerFetch, tuple[str, str], tuple[str, str], dt.datetime],
                   Awaitable[list[FetchPlan]]]

__all__ = ["Backfiller", "BackfillSettings", "PairStats", "Progress", "RoundResult"]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class BackfillSettings:
    recent_window: float = 120.0  # seconds: younger segments are the downloader's
    hours: int = 336  # how far back rounds compare
    interval: float = 60.0  # seconds between rounds with one peer
    max_concurrency: int = 5  # download exchanges at once, for the whole node
    backoff_cap: float = 30.0

    @classmethod
    def from_config(cls, cfg) -> "BackfillSettings":
        return cls(cfg.recent_window, cfg.backfill_hours, cfg.backfill_interval,
                   cfg.max_concurrency, cfg.backoff_cap)


@dataclass
class PeerState:
    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=300.0))
    last_round: float | None = None  # wall clock of the last completed round
    last_result: RoundResult | None = None


@dataclass(frozen=True)
class BackfillState:
    """What status shows of the rounds with one peer."""

    last_round: float | None = None
    round_ok: bool | None = None
    round_error: str | None = None
    missing: int | None = None


class Backfiller:
    def __init__(self, peers: PeerSet, clients: ClientFactory, index: ArchiveIndex,
                 ingest: Ingest, downloads: Downloads, metrics: Metrics,
                 settings: BackfillSettings, *, kinds: PeerKinds,
                 clock: Callable[[], dt.datetime] = utc_now,
                 rng: random.Random | None = None,
                 files: FileSetPuller | None = None,
                 grace: StartupGrace | None = None) -> None:
        """`grace`: which failures to reach a peer are still "not up yet" (INFO, not
        WARNING), shared with the pusher; trio's clock is its time."""
        self.files = files  # chat batches and extras files, after the segments
        self.peers = peers
        self.clients = clients
        self.index = index
        self.ingest = ingest
        self.downloads = downloads
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random()
        self.states: dict[str, PeerState] = {}  # by peer URL
        self.kinds = kinds
        self.grace = grace or StartupGrace()
        self.legacy = LegacyPuller(index, self._store_tombstones, settings.recent_window)

    def as_peer(self, peer: Peer | str) -> Peer:
        """A peer given by URL is the configured one with that URL, if any."""
        if isinstance(peer, Peer):
            return peer
        return self.peers.peer_for(peer)

    def _state(self, peer: Peer) -> PeerState:
        state = self.states.get(peer.url)
        if state is None:  # a failing peer backs off up to --backoff-cap, like pushes
            cap = self.settings.backoff_cap
            state = self.states[peer.url] = PeerState(Backoff(base=min(1.0, cap), cap=cap))
        return state

    def state(self, peer: Peer) -> BackfillState:
        state = self.states.get(peer.url)
        result = state.last_result if state else None
        if state is None or result is None:
            return BackfillState(last_round=state.last_round if state else None)
        return BackfillState(state.last_round, result.ok, result.error, result.total("missing"))

    async def run(self) -> None:
        """One loop per peer, so a slow, hanging or hostile peer never holds back the
        others' rounds; follows the peer set (a new peer's first round waits one
        interval, the peers known at start-up go at once)."""
        await follow_peers(self.peers, self._peer_loop)

    async def _peer_loop(self, peer: Peer, start_now: bool) -> None:
        interval = self.settings.interval
        try:
            if not start_now:
                await trio.sleep(jittered(interval, 0.2, self.rng))
            while True:
                state = self._state(peer)
                await trio.sleep(state.backoff.wait_time(trio.current_time()))
                await self.round_with_peer(peer)
                await trio.sleep(jittered(interval, 0.2, self.rng))
        finally:
            if self.peers.by_url(peer.url) is None:
                self.states.pop(peer.url, None)
                self.grace.forget(peer.url)

    async def round_all(self, peers: Iterable[Peer | str], progress: Progress | None = None
                        ) -> list[RoundResult]:
        """One round with each peer, peers in parallel; a failing peer costs only itself."""
        peers = [self.as_peer(p) for p in peers]
        results: list[RoundResult] = []
        now_mono = trio.current_time()

        async def one(peer: Peer) -> None:
            if not self._state(peer).backoff.ready(now_mono):
                log.debug("backfill: %s backing off", peer)
                return
            results.append(await self.round_with_peer(peer, progress))

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(one, peer)
        urls = {p.url for p in peers}
        for url in list(self.states):
            if url not in urls:
                del self.states[url]
        return results

    async def round_with_peer(self, peer: Peer | str, progress: Progress | None = None
                              ) -> RoundResult:
        """One round with one peer: its pair digests, then each (channel, quality) that
        differs as a unit of work of its own (hour digests, listings, downloads)."""
        peer = self.as_peer(peer)
        state = self._state(peer)
        result = RoundResult(peer.url, peer.name)
        started = trio.current_time()
        unreachable = False  # no answer at all: the peer may just not be up yet
        try:
            if await self.kinds.kind(peer) is PeerKind.WUBLOADER:
                await self._legacy_round(peer, result, progress)
            else:
                await self._segsync_round(peer, result, progress)
        except PeerError as e:
            result.ok = False
            result.error = str(e)
            unreachable = e.status is None
            if e.status in (404, 405) and self.kinds.known(peer) is PeerKind.SEGSYNC:
                self.kinds.forget(peer)  # its /v1 is gone: probe it again
        kind = self.kinds.known(peer)
        # chat and extras follow, unless the peer failed as a whole (down, no digests)
        if self.files is not None and kind is not None and (result.ok or result.pairs):
            files = result.files = await self.files.round_with(
                peer, kind, self.clients, hour_range(self.clock(), self.settings.hours),
                self.settings.max_concurrency + 2)
            if files.errors and result.ok:
                result.ok = False
                result.error = f"chat/extras: {files.errors[0]}"
        self._finish_round(peer, state, result, trio.current_time() - started, unreachable)
        return result

    async def _segsync_round(self, peer: Peer, result: RoundResult,
                             progress: Progress | None) -> None:
        async with self.clients.client(
                peer, concurrency=connections_for(self.settings.max_concurrency)) as client:
            now = self.clock()
            hours = hour_range(now, self.settings.hours)
            remote = await client.pair_digests(*hours)
            remote_pairs = {(c, q): d for c, q, d in remote.pairs}
            local_pairs = {(c, q): d for c, q, d in self.index.pair_digests(*hours)}
            result.pairs_compared = len(remote_pairs)
            async with trio.open_nursery() as nursery:
                for pair in differing_keys(local_pairs, remote_pairs):
                    stats = result.pairs[pair] = PairStats()
                    fetch = PeerFetch(client, self.peers.capabilities(peer), peer,
                                      stats, progress)
                    nursery.start_soon(self._pair_unit, fetch, pair, hours, now,
                                       self.compare_pair)

    async def _legacy_round(self, peer: Peer, result: RoundResult,
                            progress: Progress | None) -> None:
        """A wubloader node: every (channel, quality) it holds is a unit, compared by
        listings; downloads one GET each (it has no batch fetch)."""
        async with self.clients.wubloader_client(
                peer, concurrency=connections_for(self.settings.max_concurrency)) as client:
            now = self.clock()
            hours = hour_range(now, self.settings.hours)
            pairs = await self.legacy.pairs(client)
            result.pairs_compared = len(pairs)
            async with trio.open_nursery() as nursery:
                for pair in pairs:
                    stats = result.pairs[pair] = PairStats()
                    fetch = PeerFetch(client, PeerCapabilities(batch_fetch=False), peer,
                                      stats, progress)
                    nursery.start_soon(self._pair_unit, fetch, pair, hours, now,
                                       self.legacy.compare_pair)

    def _finish_round(self, peer: Peer, state: PeerState, result: RoundResult,
                      duration: float, unreachable: bool = False) -> None:
        errors = [s.error for s in result.pairs.values() if s.error]
        if result.ok and errors:
            result.ok = False
            result.error = f"{len(errors)} of {len(result.pairs)} pairs failed: {errors[0]}"
        result.duration = duration
        self.metrics.round_duration.observe(duration)
        if not unreachable:
            self.grace.answered(peer.url)
        if result.ok:
            state.backoff.success()
            state.last_round = time.time()
            self.metrics.last_round.labels(peer.name).set(state.last_round)
        else:
            now = trio.current_time()
            delay = state.backoff.failure(now)
            if unreachable and self.grace.expected(peer.url, now):
                log.info("backfill from %s failed: %s; not up yet? (a warning if it is "
                         "still down %.0fs after start-up)", peer, result.error,
                         self.grace.grace)
            else:
                log.warning("backfill from %s failed: %s; next try in %.0fs", peer,
                            result.error, delay)
        state.last_result = result
        self._log_round(peer, result)

    async def _pair_unit(self, fetch: PeerFetch, pair: tuple[str, str], hours: tuple[str, str],
                         now: dt.datetime, compare: Compare) -> None:
        """Compare one (channel, quality) and fetch what it lacks; its failure is its own."""
        started = trio.current_time()
        stats = fetch.stats
        try:
            plans = await compare(fetch, pair, hours, now)
            names = [name for plan in plans for name in plan.fetch]
            if fetch.progress is not None and names:
                fetch.progress.planned(len(names), None)
            await self.downloads.fetch(fetch, names)
        except PeerError as e:
            stats.error = str(e)
        finally:
            stats.duration = trio.current_time() - started

    async def compare_pair(self, fetch: PeerFetch, pair: tuple[str, str],
                           hours: tuple[str, str], now: dt.datetime) -> list[FetchPlan]:
        """Hour digests, then listings of the differing hours only, newest first.

        Tombstones the peer has and we lack are created here, without a download.
        """
        client, stats = fetch.client, fetch.stats
        channel, quality = pair
        first, last = hours
        remote_hours = dict((await client.hour_digests(channel, quality, first, last)).hours)
        local_hours = dict(self.index.hour_digests(channel, quality, first, last))
        stats.hours_compared = len(remote_hours)
        plans = []
        for hour in newest_first(differing_keys(local_hours, remote_hours)):
            listing = await client.listing(channel, quality, hour)
            stats.hours_listed += 1
            plan = plan_hour(channel, quality, hour, listing.names,
                             self.index.names(channel, quality, hour), now,
                             self.settings.recent_window)
            stats.add_plan(plan)
            await self._store_tombstones(fetch, plan)
            if plan.fetch:
                plans.append(plan)
        return plans

    async def _store_tombstones(self, fetch: PeerFetch, plan: FetchPlan) -> None:
        for name in plan.tombstones:
            try:
                status = await self.ingest.accept_tombstone(name, source=f"pull {fetch.peer}")
            except OSError as e:  # full disk: a later round retries
                fetch.stats.failed += 1
                log.error("backfill: storing %s: %s", name.tombstone_path, e)
                self.metrics.pulls.labels(fetch.label, "tombstone", "storage_error").inc()
                continue
            self.metrics.pulls.labels(fetch.label, "tombstone", status).inc()
            fetch.stats.tombstones += 1

    def _log_round(self, peer: Peer, r: RoundResult) -> None:
        """One line per peer and (channel, quality) that differed; in sync (or nothing
        to do) is debug."""
        if not r.pairs:
            if r.ok:
                log.debug("backfill from %s: in sync (%d pairs compared, %.3fs)",
                          peer, r.pairs_compared, r.duration)
            return
        for (channel, quality), s in sorted(r.pairs.items()):
            # a wubloader node's pairs are all compared each round: most have nothing to do
            idle = not (s.error or s.missing or s.tombstones or s.failed)
            log.log(
                logging.WARNING if s.error else logging.DEBUG if idle else logging.INFO,
                "backfill from %s %s/%s: hours compared %d, hours listed %d, missing %d, "
                "downloaded %d, tombstones %d, got elsewhere %d, skipped recent %d temp %d "
                "tombstoned %d hash-mismatch %d, failed %d, bytes %d, duration %.3fs%s",
                peer, channel, quality, s.hours_compared, s.hours_listed, s.missing,
                s.downloaded, s.tombstones, s.elsewhere, s.skipped_recent, s.skipped_temp,
                s.skipped_tombstoned, s.hash_mismatch, s.failed, s.bytes, s.duration,
                f"; error: {s.error}" if s.error else "",
            )
