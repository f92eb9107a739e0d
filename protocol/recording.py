"""Downloader-aware push, the pure part: does this node record a (channel, quality)
itself, and should an offered segment wait for the local downloader?

A node whose own downloader records a pair does not want a segment that downloader is
about to write (the recent window's reason, applied to push): it answers an offer
"later". It still wants at once a segment the downloader has already passed (a
hole), and a node that records nothing wants everything at once. No I/O, no clock:
callers pass `now` (any monotonic clock, in seconds) to every time-dependent call.

A downloader that falls behind fetches several segments at once (wubloader's does),
and creates a temp file only once a response's headers arrive: a later segment can
land while an earlier one is still in flight with no temp file to show for it. So a
segment the downloader passed is a hole only once the downloader has had the time it
lately took to write segments out of order (its reorder lag, learned from its own
late writes: none for a downloader that writes in order).

A segment nothing later passes (the last one before the stream ends or the downloader
stalls, or the first of several missed in a row) is a hole by the clock: once the
wall clock is past its end (start + duration) by the downloader's lateness (how long
after a segment's end it lately wrote its segments, learned from its own writes) plus
a margin (how much that varied) and no download of it is in progress, the downloader
would have written it by now. Callers pass the wall clock (`wall_now`) beside `now`.

A node only learns that it records a pair from its downloader's first file, which
comes seconds after the agent (and the stream) started: offers before it would all be
wanted. So the operator can declare the pairs its downloader records
(`parse_declared_pairs`): a declared pair counts as recorded from the agent's start,
before any file of it, until it had no local file for `declared_grace` seconds (since
the start, or since its last file), so a node whose downloader is down is not starved.
"""

from __future__ import annotations

import collections
import datetime as dt
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, Iterable, TypeVar

from .errors import SegmentNameError
from .names import Kind, SegmentName, parse_filename, validate_component

# downloaders compute start times from playlists with small float differences: two
# segments this close with the same duration, type and hash are the same segment
NEAR_DUPLICATE = dt.timedelta(milliseconds=1)

MIN_RETRY_AFTER = 0.25
MAX_RETRY_AFTER = 5.0
# a temp file this old is a download that died (a crashed downloader leaves its temp)
TEMP_TTL = 30.0
MAX_PAIRS = 1024        # (channel, quality) pairs whose downloader state is kept
MAX_TEMPS_PER_PAIR = 64  # downloads in progress remembered per pair
MAX_PASSES = 256         # frontier advances remembered per pair (when a start was passed)
MAX_REORDERS = 16        # late (out of order) writes remembered per pair
REORDER_MEMORY = 300.0   # seconds a late write keeps its lag in the hole grace
MAX_HOLE_GRACE = 10.0    # longest a passed segment is waited for before it is a hole
GRACE_FACTOR = 1.5       # margin over the longest lag seen
# the lateness rule (a segment not written this long after its end is a hole)
MAX_LATENESS_SAMPLES = 64  # the downloader's latest writes whose lateness is kept
# the margin over the latest write's lateness seen lately: how much its lateness
# varied lately (a downloader that polls or stalls now and then varies more), at least
MIN_LATENESS_MARGIN = 1.0
# the margin while the downloader lately fetched several segments at once: one that
# falls behind also stalls now and then (a busy machine), for longer than it varied
STALL_MARGIN = 5.0
# a downloader lately later than this (or a wall clock that far off) is not timed:
# its holes are known only once it passes them
MAX_LATENESS = 30.0
# the grace while the downloader fetches several segments at once (two or more temp
# files open together), before any late write has taught it a lag (and the least
# grace then): its temp file of a segment comes once the response headers arrive,
# well within a second of the start that its later siblings' bodies follow. 2 s made
# every hole of a downloader behind the stream wait 2 s after its pass
# (bench/cluster_bandwidth.py --behind: repaired 3.05 s after a peer had it)
BURST_GRACE = 1.0
# a declared pair with no local file this long (since the start or its last file)
# counts as not recorded here
DECLARED_GRACE = 30.0
MAX_DECLARED = 256  # pairs an operator may declare


def parse_declared_pairs(value: object) -> frozenset[tuple[str, str]]:
    """The pairs the local downloader records, as an operator writes them: a list of
    "CHANNEL/QUALITY" strings, or a table CHANNEL = [QUALITY, ...] (wubloader's
    downloader takes channels and a list of qualities). ValueError saying what is
    wrong."""
    pairs: set[tuple[str, str]] = set()
    if isinstance(value, dict):
        for channel, qualities in value.items():
            if isinstance(qualities, str):
                qualities = [qualities]
            if not isinstance(qualities, list) or not qualities:
                raise ValueError(f"{channel!r} must list its qualities, "
                                 f'e.g. {channel} = ["source", "480p"]')
            for quality in qualities:
                pairs.add(_declared_pair(channel, quality))
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, str) or item.count("/") != 1:
                raise ValueError(f"{item!r} must be CHANNEL/QUALITY, e.g. desertbus/source")
            pairs.add(_declared_pair(*item.split("/")))
    else:
        raise ValueError('must be a list of "CHANNEL/QUALITY" or a table '
                         'CHANNEL = ["QUALITY", ...]')
    if len(pairs) > MAX_DECLARED:
        raise ValueError(f"at most {MAX_DECLARED} pairs")
    return frozenset(pairs)


def _declared_pair(channel: object, quality: object) -> tuple[str, str]:
    try:
        return validate_component(channel, "channel"), validate_component(quality, "quality")
    except SegmentNameError as e:
        raise ValueError(str(e)) from None


def near_duplicate(name: SegmentName, local: Iterable[SegmentName]) -> bool:
    """True when a local segment has the same duration, type and hash and starts
    within NEAR_DUPLICATE of `name` (an exact match counts too)."""
    return any(
        other.hash == name.hash and other.type == name.type
        and other.duration == name.duration
        and abs(other.start - name.start) <= NEAR_DUPLICATE
        for other in local
    )


class NearDuplicates:
    """The segment file names of one hour, grouped by hash, to ask `near_duplicate`
    of many offered or listed names without comparing each with every local one."""

    def __init__(self, channel: str, quality: str, hour: str, filenames: Iterable[str]) -> None:
        self._where = (channel, quality, hour)
        self._by_hash: dict[str, list[str]] = {}
        for filename in filenames:
            if filename.endswith(".ts"):
                self._by_hash.setdefault(filename[-46:-3], []).append(filename)

    def __contains__(self, name: SegmentName) -> bool:
        if not name.replicable or (name.channel, name.quality, name.hour) != self._where:
            return False
        local = []
        for filename in self._by_hash.get(name.hash_text, ()):
            try:
                other, kind = parse_filename(*self._where, filename)
            except SegmentNameError:
                continue
            if kind is Kind.SEGMENT:
                local.append(other)
        return near_duplicate(name, local)


def retry_after_for(name: SegmentName) -> float:
    """How long a deferred sender waits before offering again: half a segment, so a
    hole is noticed within about one segment of the downloader passing it."""
    return min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, float(name.duration) / 2))


def left_to_backfill(name: SegmentName, wall_now: dt.datetime, recent_window: float) -> bool:
    """A deferred segment older than the recent window is no longer push's business:
    backfill fetches it if the local downloader never wrote it."""
    return name.start < wall_now - dt.timedelta(seconds=recent_window)


@dataclass
class PairRecording:
    """What the local downloader did lately for one (channel, quality)."""

    frontier: dt.datetime | None = None   # latest start the downloader wrote
    last_seen: float = float("-inf")      # `now` of its latest segment or temp file
    # starts of downloads in progress (temp files) -> `now` when seen
    temps: collections.OrderedDict[dt.datetime, float] = field(
        default_factory=collections.OrderedDict)
    # (start, `now`) of every frontier advance, oldest first: when a start was passed
    passes: collections.deque[tuple[dt.datetime, float]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_PASSES))
    # (`now`, lag) of late writes: how long after passing a start the downloader wrote it
    reorders: collections.deque[tuple[float, float]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_REORDERS))
    # `now` when two or more of its downloads were last seen in progress together
    concurrent_at: float = float("-inf")
    # (`now`, seconds) of its writes: how long after a segment's end, by the wall
    # clock, the downloader wrote it
    lateness: collections.deque[tuple[float, float]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_LATENESS_SAMPLES))


@dataclass(frozen=True)
class OfferDecision:
    status: str                      # "want" or "later"
    # "idle", "old", "hole", "ahead", "in_progress", "passing" (passed lately, may
    # still be in flight: the downloader has written segments out of order),
    # "declared" (a declared pair our downloader wrote nothing of yet)
    reason: str
    retry_after: float | None = None


class RecordingState:
    """Per pair: is the local downloader recording it, and how far has it got.

    Fed with what appears in the archive that no peer sent (segments and temp files);
    a pair counts as recorded while such a file appeared within `idle_after` seconds,
    and a `declared` pair also within `declared_grace` seconds of `started` (the
    `now` the agent started) or of its last such file.
    Bounded: MAX_PAIRS pairs (the least recently active forgotten first) and
    MAX_TEMPS_PER_PAIR temps per pair (the oldest forgotten first).
    """

    def __init__(self, idle_after: float, temp_ttl: float, recent_window: float,
                 declared: Iterable[tuple[str, str]] = (),
                 declared_grace: float = DECLARED_GRACE,
                 started: float = float("-inf")) -> None:
        self.idle_after = idle_after
        self.temp_ttl = temp_ttl
        self.recent_window = recent_window
        self.declared = frozenset(declared)
        self.declared_grace = declared_grace
        self.started = started
        self._pairs: collections.OrderedDict[tuple[str, str], PairRecording] = (
            collections.OrderedDict())

    def _pair(self, name: SegmentName) -> PairRecording:
        key = (name.channel, name.quality)
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = PairRecording()
            while len(self._pairs) > MAX_PAIRS:
                self._pairs.popitem(last=False)
        self._pairs.move_to_end(key)
        return pair

    def get(self, channel: str, quality: str) -> PairRecording | None:
        return self._pairs.get((channel, quality))

    def segment_written(self, name: SegmentName, now: float,
                        wall_now: dt.datetime | None = None) -> None:
        """The local downloader finished a segment (final name, not from a peer), at
        `wall_now` by the wall clock (None: its lateness is not learned)."""
        pair = self._pair(name)
        pair.last_seen = now
        if wall_now is not None:
            pair.lateness.append((now, (wall_now - name.end).total_seconds()))
        if pair.frontier is None or name.start > pair.frontier:
            pair.frontier = name.start
            pair.passes.append((name.start, now))
        else:
            _note_late(pair, name.start, now)
        _drop_temp(pair, name.start)

    def temp_appeared(self, name: SegmentName, now: float) -> None:
        """A download began (wubloader's downloader creates its temp file once the
        response headers arrived). One of a start already passed teaches the reorder
        lag too: it is learned even when a peer's copy won the race and the
        downloader's own final file then looks like the peer's."""
        pair = self._pair(name)
        pair.last_seen = now
        _note_late(pair, name.start, now)
        pair.temps[name.start] = now
        pair.temps.move_to_end(name.start)
        if sum(now - seen <= self.temp_ttl for seen in pair.temps.values()) > 1:
            pair.concurrent_at = now  # fetching several at once: it has fallen behind
        while len(pair.temps) > MAX_TEMPS_PER_PAIR:
            pair.temps.popitem(last=False)

    def temp_gone(self, name: SegmentName) -> None:
        pair = self._pairs.get((name.channel, name.quality))
        if pair is not None:
            _drop_temp(pair, name.start)

    def pairs(self, now: float) -> list[tuple[str, str, bool, bool, float | None]]:
        """Every pair followed or declared, sorted: (channel, quality, declared,
        recording now, `now` of its downloader's last file or None)."""
        keys = sorted(set(self._pairs) | self.declared)
        out = []
        for channel, quality in keys:
            pair = self._pairs.get((channel, quality))
            last = pair.last_seen if pair is not None else float("-inf")
            out.append((channel, quality, (channel, quality) in self.declared,
                        self.recording(channel, quality, now),
                        None if last == float("-inf") else last))
        return out

    def recording(self, channel: str, quality: str, now: float) -> bool:
        pair = self._pairs.get((channel, quality))
        return recorded(pair, now, self.idle_after,
                        self.declared_grace if (channel, quality) in self.declared else None,
                        self.started)

    def decide(self, name: SegmentName, now: float, wall_now: dt.datetime) -> OfferDecision:
        pair = self._pairs.get((name.channel, name.quality))
        recording = self.recording(name.channel, name.quality, now)
        if pair is None and recording:
            pair = PairRecording()  # declared, nothing of it written yet
        return offer_decision(name, pair, now, wall_now, self.idle_after, self.temp_ttl,
                              self.recent_window, recording)

    def hole_at(self, name: SegmentName, now: float, wall_now: dt.datetime | None = None
                ) -> float | None:
        """When (`now`'s clock) `name` counts as a hole of the local downloader; None
        while it is being downloaded, or ahead of it with no lateness to time it by,
        or the pair is not recorded."""
        pair = self._pairs.get((name.channel, name.quality))
        if pair is None or not self.recording(name.channel, name.quality, now):
            return None
        return hole_at(name, pair, now, self.temp_ttl, wall_now)


def recorded(pair: PairRecording | None, now: float, idle_after: float,
             declared_grace: float | None = None, started: float = float("-inf")) -> bool:
    """Does the local downloader record this pair: a file of it appeared within
    `idle_after`; for a declared pair (`declared_grace` given) also within
    `declared_grace` of the agent's start (`started`) or of its last file."""
    last = pair.last_seen if pair is not None else float("-inf")
    if now - last <= idle_after:
        return True
    return declared_grace is not None and now - max(last, started) <= declared_grace


def _note_late(pair: PairRecording, start: dt.datetime, now: float) -> None:
    """The downloader is at `start` (a temp file or a final one) after it had already
    passed it: remember how late."""
    if pair.frontier is None or start >= pair.frontier - NEAR_DUPLICATE:
        return
    passed = passed_at(pair, start)
    if passed is not None and passed > float("-inf"):
        pair.reorders.append((now, now - passed))


def _drop_temp(pair: PairRecording, start: dt.datetime) -> None:
    for t in [t for t in pair.temps if abs(t - start) <= NEAR_DUPLICATE]:
        del pair.temps[t]


def passed_at(pair: PairRecording, start: dt.datetime) -> float | None:
    """The `now` at which the downloader first wrote a segment starting at or after
    `start` (within NEAR_DUPLICATE); None if it has not got that far. Before the
    remembered advances: the oldest one's time (a later bound, so a longer wait)."""
    if pair.frontier is None or start > pair.frontier + NEAR_DUPLICATE:
        return None
    when = None
    for passed, seen in reversed(pair.passes):
        if passed < start - NEAR_DUPLICATE:
            break
        when = seen
    return float("-inf") if when is None else when


def recent_lateness(pair: PairRecording, now: float) -> list[float]:
    """How long after their end (seconds) the downloader wrote its segments, within
    REORDER_MEMORY."""
    return [late for seen, late in pair.lateness if now - seen <= REORDER_MEMORY]


def behind_stream(pair: PairRecording, now: float, duration: float) -> bool:
    """Has the downloader lately fallen behind the stream: fetched several segments at
    once, or written one more than a segment's `duration` after its end? One later
    than a segment's length polls less often than segments come (or fetches slower):
    at its next poll it starts every segment that became available at once, and it
    stalls now and then, before it ever shows two downloads open together. Treated as
    in order, a stall made the clock take segments it would have written, and a later
    sibling that landed before an earlier one's headers made that one a hole
    (bench/cluster_bandwidth.py --behind: 1 segment of 30 at seed 11, 2 at seed 12)."""
    if now - pair.concurrent_at <= REORDER_MEMORY:
        return True
    return max(recent_lateness(pair, now), default=float("-inf")) > duration


def hole_grace(pair: PairRecording, now: float, behind: bool) -> float:
    """How long after passing a start the downloader may still write it: its longest
    recent reorder lag with a margin, at least BURST_GRACE while it is `behind` the
    stream (`behind_stream`: it fetches several segments at once; 0 for a downloader
    that writes in order, one at a time)."""
    lags = [lag for seen, lag in pair.reorders if now - seen <= REORDER_MEMORY]
    burst = BURST_GRACE if behind else 0.0
    return min(MAX_HOLE_GRACE, max(max(lags, default=0.0) * GRACE_FACTOR, burst))


def expected_lateness(pair: PairRecording, now: float, behind: bool) -> float | None:
    """How long after a segment's end the downloader may still write it: the latest
    of its recent writes' lateness plus a margin, how much that lateness varied (at
    least MIN_LATENESS_MARGIN, at least STALL_MARGIN while it is `behind` the stream,
    `behind_stream`: one that falls behind also stalls). None when it wrote nothing
    with a wall time within REORDER_MEMORY, or that is over MAX_LATENESS."""
    recent = recent_lateness(pair, now)
    if not recent:
        return None
    latest, earliest = max(recent), min(recent)
    floor = STALL_MARGIN if behind else MIN_LATENESS_MARGIN
    bound = latest + max(floor, latest - earliest)
    return bound if bound <= MAX_LATENESS else None


def overdue_at(name: SegmentName, pair: PairRecording, now: float,
               wall_now: dt.datetime | None, behind: bool) -> float | None:
    """When (`now`'s clock) the downloader, as late as it lately was, would have
    written `name` (may be in the past); None without a wall clock or a lateness."""
    if wall_now is None:
        return None
    lateness = expected_lateness(pair, now, behind)
    if lateness is None:
        return None
    due = name.end + dt.timedelta(seconds=lateness)
    return now + (due - wall_now).total_seconds()


def in_progress(pair: PairRecording, start: dt.datetime, now: float, temp_ttl: float) -> bool:
    """A download of that start is under way here (a temp file younger than temp_ttl)."""
    return any(abs(t - start) <= NEAR_DUPLICATE and now - seen <= temp_ttl
               for t, seen in pair.temps.items())


def hole_at(name: SegmentName, pair: PairRecording, now: float, temp_ttl: float,
            wall_now: dt.datetime | None = None) -> float | None:
    """When `name` becomes a hole the downloader left (may be in the past: a hole
    now): once it was passed and the downloader's reorder lag has gone by, or once it
    is overdue by the clock (`overdue_at`), whichever comes first. None while it is
    being downloaded, or ahead of the frontier and not timed."""
    if in_progress(pair, name.start, now, temp_ttl):
        return None
    passed = passed_at(pair, name.start)
    behind = behind_stream(pair, now, float(name.duration))  # asked once for both rules
    times = [overdue_at(name, pair, now, wall_now, behind)]
    if passed is not None:
        times.append(passed + hole_grace(pair, now, behind))
    return min((t for t in times if t is not None), default=None)


def offer_decision(
    name: SegmentName, pair: PairRecording | None, now: float, wall_now: dt.datetime,
    idle_after: float, temp_ttl: float, recent_window: float,
    recording: bool | None = None,
) -> OfferDecision:
    """A segment we neither hold nor have tombstoned is offered: now or later?

    - the pair is not recorded here (nothing of ours appeared within `idle_after`;
      `recording`, when given, says so instead: a declared pair's rule, `recorded`):
      want, as any archive-only node;
    - it started before our recent window (`wall_now - recent_window`): want, our
      downloader is no longer expected to fetch it (backfill would fetch it too);
    - a download of that start is in progress here (a temp file younger than
      `temp_ttl`): later;
    - our downloader passed it at least its reorder lag ago (`hole_grace`), or it is
      overdue by the clock (the wall clock is past its end by our downloader's recent
      lateness, `overdue_at`): a hole, want;
    - our downloader wrote nothing of the pair yet (a declared pair since the start):
      later ("declared");
    - it starts after everything our downloader wrote (its frontier): later ("ahead");
    - otherwise our downloader passed it less than its reorder lag ago: later
      ("passing"), until then.
    """
    if recording is None:
        recording = recorded(pair, now, idle_after)
    if pair is None or not recording:
        return OfferDecision("want", "idle")
    if left_to_backfill(name, wall_now, recent_window):
        return OfferDecision("want", "old")
    retry = retry_after_for(name)
    if pair.last_seen == float("-inf"):
        return OfferDecision("later", "declared", retry)
    if in_progress(pair, name.start, now, temp_ttl):
        return OfferDecision("later", "in_progress", retry)
    at = hole_at(name, pair, now, temp_ttl, wall_now)
    if at is not None and at <= now:
        return OfferDecision("want", "hole")
    if passed_at(pair, name.start) is None:
        return OfferDecision("later", "ahead", retry)
    assert at is not None  # passed, not in progress: it has a time
    return OfferDecision("later", "passing",
                         min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, at - now)))


T = TypeVar("T")


class DeferredQueue(Generic[T]):
    """Items waiting until a due time (offers a peer asked us to repeat later).

    Bounded: `park` refuses past `max_items` (the caller then leaves the item to
    backfill). Pure: the caller passes its clock's `now` and sleeps until `next_due`.
    """

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def park(self, item: T, due: float) -> bool:
        if len(self._heap) >= self.max_items:
            return False
        heapq.heappush(self._heap, (due, next(self._order), item))
        return True

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[T]:
        """Every item due at `now`, earliest first."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out


# ---- hole repair: offers answered "later" that the downloader then passed ----
# Once the local downloader has passed a deferred offer without writing it (a hole,
# `hole_at`), the segment is fetched at once from a node that offered it, instead of
# waiting for that node's re-offer timer. `HoleWatch` remembers the deferred offers
# (bounded, oldest forgotten first) with the nodes that offered them, and says which
# are due for repair and when.

MAX_WATCHED = 4096  # deferred offers watched for holes, per node
MAX_SENDERS = 8     # nodes remembered per watched segment (who offered it)


@dataclass
class Watched:
    """A segment offered to us and answered "later", and the nodes that offered it,
    most recent last."""

    name: SegmentName
    senders: list[str] = field(default_factory=list)
    scheduled: float | None = None  # `now` of the repair already planned, if any


class HoleWatch:
    def __init__(self, max_items: int = MAX_WATCHED) -> None:
        self.max_items = max_items
        self._items: collections.OrderedDict[str, Watched] = collections.OrderedDict()
        # (channel, quality) -> paths watched of that pair
        self._by_pair: dict[tuple[str, str], set[str]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, path: str) -> bool:
        return path in self._items

    def get(self, path: str) -> Watched | None:
        return self._items.get(path)

    def deferred(self, name: SegmentName, sender: str | None) -> None:
        """`sender` (a node name; None if it did not say) offered `name` and was told
        later."""
        item = self._items.get(name.path)
        if item is None:
            item = self._items[name.path] = Watched(name)
            self._by_pair.setdefault((name.channel, name.quality), set()).add(name.path)
            while len(self._items) > self.max_items:
                self.forget(next(iter(self._items)))
        self._items.move_to_end(name.path)
        if sender:
            if sender in item.senders:
                item.senders.remove(sender)
            item.senders.append(sender)
            del item.senders[:-MAX_SENDERS]

    def forget(self, path: str) -> None:
        """Settled: written here (by the downloader or a peer), or given up."""
        item = self._items.pop(path, None)
        if item is None:
            return
        key = (item.name.channel, item.name.quality)
        paths = self._by_pair.get(key)
        if paths is not None:
            paths.discard(path)
            if not paths:
                del self._by_pair[key]

    def paths_of(self, channel: str, quality: str) -> list[str]:
        return list(self._by_pair.get((channel, quality), ()))

    def plan(self, state: RecordingState, channel: str, quality: str, now: float,
             wall_now: dt.datetime, recent_window: float) -> list[tuple[Watched, float]]:
        """After the downloader wrote a segment of this pair: the watched segments that
        are holes now or will be (each with the `now` it becomes one) and have no
        repair planned for that time yet. Those older than the recent window are
        forgotten (left to backfill)."""
        out = []
        for path in self.paths_of(channel, quality):
            item = self._items[path]
            if left_to_backfill(item.name, wall_now, recent_window):
                self.forget(path)
                continue
            at = state.hole_at(item.name, now, wall_now)
            if at is None or (item.scheduled is not None and item.scheduled <= at):
                continue
            item.scheduled = at
            out.append((item, at))
        return out


def repair_order(senders: list[str], peers: list[str]) -> list[str]:
    """Whom to ask for a hole, in turn: the nodes that offered it (latest first) among
    our peers, then every other peer (a node may be known to us under another name)."""
    offered = [s for s in reversed(senders) if s in peers]
    return offered + [p for p in peers if p not in offered]
