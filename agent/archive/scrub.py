"""The scrub: re-hash every visible segment against its name, quarantine what rotted,
and fetch a good copy back from a peer.

The decisions (order, rate, resume point, verdicts, quarantine paths) are pure, in
`protocol.scrub`; this module reads files (in worker threads, a bounded slice per
hop), sleeps between slices so the byte rate stays at `scrub-rate`, moves rotten
files to `ROOT/.quarantine/...`, and saves its resume point atomically to
`ROOT/.segsync/scrub.json` (dot-directories are never channels, nothing replicates
them). Tombstoned segments are left alone.

Rot found while serving (push, batch fetch, download) comes in through `suspect`:
such a file is checked at once, outside the pass and its rate.

A lost segment (in quarantine, no good copy in the archive: no peer had one when it
rotted, or the agent restarted since) is asked for again at the start of every pass.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import trio
from prometheus_client import Counter, Gauge

from protocol import limits
from protocol import messages as m
from protocol.hashing import SegmentHasher
from protocol.names import Kind, SegmentName, parse_filename, parse_segment_path
from protocol.scrub import (
    GOOD,
    QUARANTINE_DIR,
    RateBudget,
    ScrubState,
    ScrubStateError,
    advance,
    begin_pass,
    decode_state,
    encode_state,
    end_pass,
    hour_after_cursor,
    hours_oldest_first,
    lost_segments,
    pass_wait,
    quarantine_relpath,
    remaining_in_hour,
    should_checkpoint,
    verdict,
)

from ..telemetry.metrics import Metrics
from ..telemetry.progress import Progress
from .index import ArchiveIndex
from .store import Store, fsync_dir

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024  # bytes per read() inside a thread hop
SLICE = 8 * 1024 * 1024  # most bytes hashed per thread hop (fewer at a low rate)
STATE_DIR = ".segsync"
STATE_FILE = "scrub.json"
CHECKPOINT_EVERY = 1.0  # seconds between saves of the resume point during a pass
MAX_SUSPECTS = 1024  # files reported by serving, waiting for a check
MAX_LOST_SHOWN = limits.MAX_STATUS_LOST_PATHS  # lost paths kept for status (the count is exact)
EMPTY_ARCHIVE_RETRY = 60.0  # an empty index is not a pass: look again this much later
MAX_QUARANTINE_LISTED = 100_000  # quarantined files looked at per pass for lost segments

Heal = Callable[[SegmentName], Awaitable[bool]]


@dataclass(frozen=True)
class ScrubSettings:
    """`rate`: bytes/s of the periodic pass (None: full speed); `interval`: seconds
    from the end of a full pass to the start of the next; `start_delay`: seconds after
    start-up before the first (start-up rescans and backfill go first)."""

    rate: float | None = 10e6
    interval: float = 86400.0
    start_delay: float = 60.0

    @classmethod
    def from_config(cls, cfg) -> "ScrubSettings":
        return cls(cfg.scrub_rate * 1e6, cfg.scrub_interval, cfg.scrub_start_delay)


class ScrubMetrics:
    """The scrub's Prometheus series, in the node's registry."""

    def __init__(self, registry) -> None:
        self.bytes = Counter("segsync_scrub_bytes", "Segment bytes re-hashed by the scrub",
                             registry=registry)
        self.files = Counter("segsync_scrub_files", "Segments re-hashed by the scrub",
                             registry=registry)
        self.rotten = Counter("segsync_scrub_rotten", "Rotten segments found and quarantined",
                              ["reason"], registry=registry)
        self.healed = Counter("segsync_scrub_healed", "Rotten segments fetched again from a peer",
                              registry=registry)
        self.lost = Counter("segsync_scrub_lost",
                            "Rotten segments no peer could give back (left in quarantine)",
                            registry=registry)
        self.last_full_pass = Gauge("segsync_scrub_last_full_pass_timestamp_seconds",
                                    "Unix time the last full scrub pass ended", registry=registry)


@dataclass
class ScrubReport:
    """What a scrub (one pass, or everything since start) did."""

    files: int = 0
    bytes: int = 0
    rotten: int = 0
    healed: int = 0
    lost: int = 0
    lost_paths: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=MAX_LOST_SHOWN))
    quarantined: list[str] = field(default_factory=list)  # this report's, for the one-shot
    retried: int = 0  # lost segments (from before) asked for again
    recovered: int = 0  # of those, healed

    @property
    def unhealed(self) -> int:
        """Rotten, or lost from before, and still without a good copy."""
        return self.rotten - self.healed + self.retried - self.recovered


class _FileHash:
    """One file being hashed, a slice per thread hop (`step` runs in a worker thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = None
        self.hasher = SegmentHasher()
        self.buf = bytearray(READ_CHUNK)

    def step(self, limit: int) -> tuple[int, bool]:
        """Hash up to `limit` more bytes: (bytes read, reached the end)."""
        if self.f is None:
            self.f = open(self.path, "rb", buffering=0)
        view = memoryview(self.buf)
        done = 0
        while done < limit:
            n = self.f.readinto(view[:min(READ_CHUNK, limit - done)])
            if not n:
                return done, True
            self.hasher.update(view[:n])
            done += n
        return done, False

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


class Scrubber:
    def __init__(
        self, store: Store, index: ArchiveIndex, metrics: Metrics, heal: Heal,
        settings: ScrubSettings, clock: Callable[[], float] = time.time,
        persist: bool = True,
    ) -> None:
        """`heal(name)` fetches a good copy from the peers (True once it is back);
        `clock` is the wall clock of the pass times; `persist=False` neither reads nor
        writes the resume point (a one-shot pass beside a running agent must not move
        the agent's)."""
        self.store = store
        self.index = index
        self.metrics = metrics
        self.scrub_metrics = ScrubMetrics(metrics.registry)
        self.heal = heal
        self.rate = settings.rate
        self.interval = settings.interval
        self.start_delay = settings.start_delay
        self.clock = clock
        self.state_path = store.root / STATE_DIR / STATE_FILE
        self.persist = persist
        self.state = ScrubState()
        self.total = ScrubReport()  # since start-up, for status
        self.passes_done = 0
        self.pass_finished = trio.Event()
        self._lock = trio.Lock()  # one quarantine + heal at a time
        self._suspects: dict[str, SegmentName] = {}
        self._suspects_ready = trio.Event()

    # ---- state ----

    def load_state(self) -> ScrubState:
        """The saved resume point; a missing or unreadable one starts afresh (logged)."""
        if not self.persist:
            return self.state
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as e:
            log.warning("scrub: cannot read %s (%s); starting a fresh pass", self.state_path, e)
            data = None
        state = ScrubState()
        if data is not None:
            try:
                state = decode_state(data)
            except ScrubStateError as e:
                log.warning("scrub: %s is unusable (%s); starting a fresh pass",
                            self.state_path, e)
        self.state = state
        if state.last_full_pass is not None:
            self.scrub_metrics.last_full_pass.set(state.last_full_pass)
        return state

    def _save_state(self, state: ScrubState) -> None:
        """Atomically: temp file, fsync, rename, fsync the directory (in a thread)."""
        directory = self.state_path.parent
        directory.mkdir(exist_ok=True)
        tmp = directory / f"{STATE_FILE}.tmp"
        with open(tmp, "wb") as f:
            f.write(encode_state(state))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.state_path)
        fsync_dir(directory)

    async def save_state(self, state: ScrubState) -> None:
        self.state = state
        if not self.persist:
            return
        try:
            await trio.to_thread.run_sync(self._save_state, state)
        except OSError as e:  # a full disk must not stop the scrub; a restart redoes more
            log.error("scrub: saving %s: %s", self.state_path, e)

    # ---- running ----

    async def run(self, periodic: bool = True, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Check reported files at once, always; with `periodic`, full passes too."""
        await trio.to_thread.run_sync(self.load_state)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._suspects_loop)
            if periodic:
                nursery.start_soon(self._pass_loop)
            task_status.started()

    async def _pass_loop(self) -> None:
        await trio.sleep(self.start_delay)
        while True:
            await trio.sleep(pass_wait(self.state, self.clock(), self.interval))
            if not self.index.pairs() and not self.state.in_progress:
                await trio.sleep(max(1.0, min(self.interval, EMPTY_ARCHIVE_RETRY)))
                continue
            await self.run_pass(self.rate)

    async def run_pass(self, rate: float | None, progress: Progress | None = None
                       ) -> ScrubReport:
        """One full pass (or the rest of the one a restart interrupted), oldest hour
        first; saves the resume point every CHECKPOINT_EVERY seconds and at the end."""
        report = ScrubReport()
        budget = RateBudget(rate)
        state = begin_pass(self.state, self.clock())
        if state.cursor is not None:
            log.info("scrub: resuming the pass after %s", "/".join(
                (state.cursor[1], state.cursor[2], state.cursor[0], state.cursor[3])))
        else:
            log.info("scrub: pass started")
        await self.save_state(state)
        await self.retry_lost(report)
        last_saved = trio.current_time()
        hours = hours_oldest_first((c, q, self.index.hours(c, q)) for c, q in self.index.pairs())
        hours = [key for key in hours if hour_after_cursor(key, state.cursor)]
        if progress is not None:
            progress.planned(sum(
                len(remaining_in_hour(key, self.index.visible_segments(key[1], key[2], key[0]),
                                      state.cursor)) for key in hours), None)
        for key in hours:
            hour, channel, quality = key
            # the hour's listing as the index holds it now: a segment added later waits
            # for the next pass, one quarantined meanwhile is skipped
            for filename in remaining_in_hour(
                    key, self.index.visible_segments(channel, quality, hour), self.state.cursor):
                name, _ = parse_filename(channel, quality, hour, filename)
                nbytes = await self.scrub_one(name, budget, report)
                if progress is not None:
                    progress.fetched(nbytes)
                self.state = advance(self.state, (hour, channel, quality, filename))
                if should_checkpoint(last_saved, trio.current_time(), CHECKPOINT_EVERY):
                    await self.save_state(self.state)
                    last_saved = trio.current_time()
        now = self.clock()
        await self.save_state(end_pass(self.state, now))
        self.scrub_metrics.last_full_pass.set(now)
        self.passes_done += 1
        self.pass_finished.set()
        self.pass_finished = trio.Event()
        log.info("scrub: pass done: %d files, %d bytes, %d rotten, %d healed, %d lost",
                 report.files, report.bytes, report.rotten, report.healed, report.lost)
        return report

    # ---- one file ----

    async def check(self, name: SegmentName, budget: RateBudget) -> tuple[str, int] | None:
        """(verdict, bytes read) for one segment, at the budget's rate; None when there
        is nothing to judge (gone, or tombstoned: left alone)."""
        if self.index.has(name, Kind.TOMBSTONE):
            return None
        fh = _FileHash(self.store.path_of(name))
        size = 0
        try:
            while True:
                try:
                    n, at_end = await trio.to_thread.run_sync(
                        fh.step, budget.slice_bytes(SLICE))
                except FileNotFoundError:
                    return None
                except OSError as e:  # the disk cannot read it: that is rot too
                    log.warning("scrub: reading %s: %s", name.path, e)
                    return verdict(name.hash, None, size), size
                size += n
                self.scrub_metrics.bytes.inc(n)
                await trio.sleep(budget.delay(n, trio.current_time()))
                if at_end:
                    break
        finally:
            fh.close()
        return verdict(name.hash, fh.hasher.digest(), size), size

    async def scrub_one(self, name: SegmentName, budget: RateBudget, report: ScrubReport) -> int:
        """Check one segment and deal with it if it rotted; returns the bytes read."""
        result = await self.check(name, budget)
        if result is None:
            return 0
        outcome, size = result
        for r in (report, self.total):
            r.files += 1
            r.bytes += size
        self.scrub_metrics.files.inc()
        if outcome != GOOD:
            await self._rotten(name, outcome, report)
        return size

    async def _rotten(self, name: SegmentName, reason: str, report: ScrubReport) -> None:
        """Quarantine, count, log, then ask the peers for a good copy."""
        async with self._lock:
            if self.store.has_tombstone(name):
                return  # tombstoned meanwhile: left alone
            try:
                moved = await trio.to_thread.run_sync(self._quarantine, name)
            except FileNotFoundError:
                return  # already moved (a report and the pass found it together)
            except OSError as e:
                log.error("scrub: %s is rotten (%s) but could not be quarantined: %s",
                          name.path, reason, e)
                return
            if self.index.discard(name, Kind.SEGMENT):
                self.metrics.indexed_segments.dec()
            self.scrub_metrics.rotten.labels(reason).inc()
            for r in (report, self.total):
                r.rotten += 1
            report.quarantined.append(moved)
            log.warning("scrub: %s is rotten (%s): moved to %s", name.path, reason, moved)
            if await self.heal(name):
                self.scrub_metrics.healed.inc()
                for r in (report, self.total):
                    r.healed += 1
                log.info("scrub: %s healed: a good copy came back from a peer", name.path)
            else:
                self.scrub_metrics.lost.inc()
                for r in (report, self.total):
                    r.lost += 1
                    r.lost_paths.append(name.path)
                log.error("scrub: %s is lost: no peer gave a good copy; the rotten file "
                          "stays in %s", name.path, moved)

    # ---- lost segments ----

    def _list_quarantine(self) -> list[str]:
        """Paths (relative to the root) of the files in the quarantine, at most
        MAX_QUARANTINE_LISTED. Runs in a thread."""
        top = self.store.root / QUARANTINE_DIR
        found: list[str] = []
        for directory, _, files in os.walk(top):
            rel = Path(directory).relative_to(self.store.root).as_posix()
            for filename in files:
                if len(found) >= MAX_QUARANTINE_LISTED:
                    log.warning("scrub: more than %d files in %s; the rest waits for a "
                                "later pass", MAX_QUARANTINE_LISTED, top)
                    return found
                found.append(f"{rel}/{filename}")
        return found

    def _in_archive(self, path: str) -> bool:
        """A good copy is visible, or a tombstone says none is needed."""
        name = parse_segment_path(path)
        return self.index.has(name, Kind.SEGMENT) or self.index.has(name, Kind.TOMBSTONE)

    async def retry_lost(self, report: ScrubReport) -> None:
        """Ask the peers again for every lost segment (in quarantine, no good copy in
        the archive): a peer that was down when it rotted may have come back."""
        lost = lost_segments(await trio.to_thread.run_sync(self._list_quarantine),
                             self._in_archive)
        for path in lost:
            async with self._lock:
                if self._in_archive(path):
                    continue  # a backfill or a push brought it back meanwhile
                name = parse_segment_path(path)
                report.retried += 1
                if await self.heal(name):
                    report.recovered += 1
                    self.total.healed += 1
                    self.scrub_metrics.healed.inc()
                    log.info("scrub: %s healed: a good copy came back from a peer (it was "
                             "lost)", path)
                else:
                    report.lost_paths.append(path)
                    if path not in self.total.lost_paths:  # status lists it
                        self.total.lost += 1
                        self.total.lost_paths.append(path)
        if report.retried:
            log.log(logging.WARNING if report.recovered < report.retried else logging.INFO,
                    "scrub: %d lost segments asked for again: %d healed, %d still lost",
                    report.retried, report.recovered, report.retried - report.recovered)

    def _quarantine(self, name: SegmentName) -> str:
        """Move the file to the quarantine, never overwriting (link, then unlink);
        returns its new path relative to the root. Runs in a thread."""
        src = self.store.path_of(name)
        attempt = 0
        while True:
            rel = quarantine_relpath(name.path, attempt)
            dst = self.store.root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
                break
            except FileExistsError:
                attempt += 1
        os.unlink(src)
        fsync_dir(dst.parent)
        fsync_dir(src.parent)
        return rel

    # ---- rot seen while serving ----

    def suspect(self, name: SegmentName) -> None:
        """A served file did not hash to its name: check it at once (never blocks;
        past MAX_SUSPECTS waiting, the periodic pass finds the rest)."""
        if name.path in self._suspects:
            return
        if len(self._suspects) >= MAX_SUSPECTS:
            log.warning("scrub: too many suspects waiting; %s waits for the next pass",
                        name.path)
            return
        self._suspects[name.path] = name
        self._suspects_ready.set()

    async def _suspects_loop(self) -> None:
        while True:
            await self._suspects_ready.wait()
            self._suspects_ready = trio.Event()
            while self._suspects:
                path = next(iter(self._suspects))
                name = self._suspects[path]
                try:
                    await self.scrub_one(name, RateBudget(None), ScrubReport())
                finally:
                    del self._suspects[path]

    # ---- status ----

    def status(self) -> m.ScrubStatus:
        """The scrub's part of /v1/status; a lost segment back in the index since (a
        later backfill found a copy) is no longer listed."""
        state = self.state
        lost = [p for p in self.total.lost_paths
                if not self.index.has(parse_filename(*_split(p))[0], Kind.SEGMENT)]
        total = self.total
        return m.ScrubStatus(
            checked=total.files, bytes=total.bytes, rotten=total.rotten,
            healed=total.healed, lost=total.lost, lost_paths=lost,
            last_full_pass=state.last_full_pass, pass_started=state.pass_started,
            position="/".join((state.cursor[1], state.cursor[2], state.cursor[0],
                               state.cursor[3])) if state.cursor else None,
        )


def _split(path: str) -> tuple[str, str, str, str]:
    channel, quality, hour, filename = path.split("/")
    return channel, quality, hour, filename

