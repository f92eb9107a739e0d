"""Coverage maps: which stretches of each hour an archive holds, as rows of cells.

Pure and sans-I/O: input is file names (as an index or a `/v1/listing` holds them),
output is strings of one-character cell codes, one string per hour. The dashboard,
the static PNG maps and the node-to-node difference all draw from these.

A segment `MM:SS.ffffff-DURATION-TYPE-HASH.ts` covers [start, start + duration).
Coverage is the union of those intervals (overlaps count once, tiny rounding gaps
between consecutive segments are closed); a segment that runs past the end of its
hour covers the start of the next one. A segment whose tombstone sits beside it is
hidden and covers nothing; the tombstone marks its cell.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from .names import format_hour, parse_hour

HOUR_SECONDS = 3600
ONE_HOUR = dt.timedelta(hours=1)

# cell codes, best first; one character each so an hour is a short string
FULL = "F"        # covered entirely by full segments
PARTIAL = "P"     # covered entirely, but somewhere only by suspect or partial ones
TOMBSTONED = "T"  # not fully covered by fulls, and a tombstoned segment starts here
HOLE = "H"        # some of it is covered by nothing
FUTURE = "-"      # a hole that starts after "now": nothing can be missing there yet
CELL_STATES = (FULL, PARTIAL, TOMBSTONED, HOLE, FUTURE)

# difference codes: a cell of node A against the same cell of node B
SAME = "="
A_ONLY = "A"      # A holds more there than B (B lacks it)
B_ONLY = "B"      # B holds more there than A
TOMB_DIFF = "T"   # a tombstone on one side only: it has not reached the other yet
DIFF_STATES = (SAME, A_ONLY, B_ONLY, TOMB_DIFF)

GAP_TOLERANCE = 0.001  # seconds: rounding between consecutive segments is no gap
MAX_MAP_HOURS = 24 * 366  # a map is bounded: one year of rows at most

# one name per line, matched in one findall over the joined names: a Python loop
# per name costs twice as much (an hour holds 1800 names, a map 336 hours of them)
_NAMES = re.compile(
    r"^(([0-5][0-9]):([0-5][0-9]\.[0-9]{6})-([0-9]{1,9}(?:\.[0-9]{1,9})?)"
    r"-(full|suspect|partial|temp)-[A-Za-z0-9_-]{43})\.(ts|tombstone)$", re.M)

Interval = tuple[float, float]


class CoverageError(ValueError):
    """A map request that cannot be answered (bad name, bad range, bad size)."""


@dataclass(frozen=True, slots=True)
class HourSpans:
    """What one hour's files cover, in seconds from the start of the hour (merged,
    sorted; intervals may end past 3600 when a segment runs into the next hour).
    Small whatever the segment count: one interval per continuous stretch."""

    full: tuple[Interval, ...] = ()
    any: tuple[Interval, ...] = ()          # full, suspect or partial
    tombstones: tuple[float, ...] = ()      # starts of tombstoned segments


EMPTY = HourSpans()


def merge(intervals: Iterable[Interval], tolerance: float = GAP_TOLERANCE) -> tuple[Interval, ...]:
    """Union of intervals, gaps up to `tolerance` closed."""
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1] + tolerance:
            if end > out[-1][1]:
                out[-1][1] = end
        else:
            out.append([start, end])
    return tuple((a, b) for a, b in out)


def hour_spans(filenames: Iterable[str]) -> HourSpans:
    """The coverage of one hour directory's files (.ts and .tombstone names).

    Temp segments cover nothing (they are being written); a .ts whose .tombstone
    is among the names is hidden. A name that is no segment name is an error:
    index and listings hold only validated names, so one here is a bug upstream."""
    filenames = list(filenames)
    text = "\n".join(filenames)
    found = _NAMES.findall(text)
    if len(found) != len(filenames) or text.count("\n") != max(0, len(filenames) - 1):
        for filename in filenames:
            if "\n" in filename or not _NAMES.fullmatch(filename):
                raise CoverageError(f"{filename!r} is not a segment or tombstone file name")
    tombstoned = {stem: int(mm) * 60 + float(ss)
                  for stem, mm, ss, _, _, suffix in found if suffix == "tombstone"}
    full, any_ = [], []
    for stem, minutes, seconds, duration, type_, suffix in found:
        if suffix != "ts" or type_ == "temp" or (tombstoned and stem in tombstoned):
            continue
        start = int(minutes) * 60 + float(seconds)
        interval = (start, start + float(duration))
        any_.append(interval)
        if type_ == "full":
            full.append(interval)
    return HourSpans(merge(full), merge(any_), tuple(sorted(tombstoned.values())))


def _spill(spans: HourSpans) -> HourSpans:
    """The part of an hour's coverage that runs into the next hour, shifted there."""
    def shift(intervals: tuple[Interval, ...]) -> tuple[Interval, ...]:
        return tuple((max(0.0, a - HOUR_SECONDS), b - HOUR_SECONDS)
                     for a, b in intervals if b > HOUR_SECONDS)
    return HourSpans(shift(spans.full), shift(spans.any))


def _cells_within(intervals: tuple[Interval, ...], cells: int, size: int) -> Iterable[range]:
    """The cells lying wholly inside each (merged, so disjoint) interval: a cell is
    covered exactly when one interval holds all of it."""
    for start, end in intervals:
        first = max(0, math.ceil((start - 1e-6) / size))
        last = min(cells, math.floor((end + 1e-6) / size))
        if last > first:
            yield range(first, last)


def hour_row(spans: HourSpans, previous: HourSpans = EMPTY, cell_seconds: int = 60,
             future_from: float | None = None) -> str:
    """One hour as cell codes: 3600 / cell_seconds cells (60 minutes by default).

    `previous` is the hour before (its segments running past the hour boundary
    cover the start of this one). Holes starting at or after `future_from`
    (seconds into this hour, from the caller's clock) are FUTURE. Cost: a few
    slice assignments per continuous stretch, not a loop over segments."""
    if cell_seconds <= 0 or HOUR_SECONDS % cell_seconds:
        raise CoverageError(f"cell size {cell_seconds} s does not divide an hour")
    cells = HOUR_SECONDS // cell_seconds
    spill = _spill(previous)
    row = [HOLE] * cells
    for code, intervals in ((PARTIAL, spans.any + spill.any), (FULL, spans.full + spill.full)):
        if spill.any:
            intervals = merge(intervals)
        for covered in _cells_within(intervals, cells, cell_seconds):
            row[covered.start:covered.stop] = [code] * len(covered)
    for start in spans.tombstones:
        i = int(start // cell_seconds)
        if row[i] != FULL:
            row[i] = TOMBSTONED
    if future_from is not None:  # a clock a little behind the downloader's: show what is held
        for i in range(max(0, math.ceil(future_from / cell_seconds)), cells):
            if row[i] == HOLE:
                row[i] = FUTURE
    return "".join(row)


def hour_range(first: str, last: str, max_hours: int = MAX_MAP_HOURS) -> list[str]:
    """Every hour from first to last, inclusive (empty when first is after last)."""
    start, end = parse_hour(first), parse_hour(last)
    count = int((end - start).total_seconds()) // HOUR_SECONDS + 1
    if count > max_hours:
        raise CoverageError(f"{first}..{last} is {count} hours; at most {max_hours}")
    return [format_hour(start + dt.timedelta(hours=i)) for i in range(max(0, count))]


def map_window(held_hours: Iterable[str], now: dt.datetime, hours: int) -> list[str]:
    """The rows of a live map: the last `hours` hours up to now's hour, starting no
    earlier than the first hour held (an archive that began yesterday is not a
    fortnight of holes). Empty when nothing is held in the window."""
    if not 1 <= hours <= MAX_MAP_HOURS:
        raise CoverageError(f"hours must be 1..{MAX_MAP_HOURS}, not {hours}")
    last = format_hour(now.replace(minute=0, second=0, microsecond=0))
    earliest = format_hour(parse_hour(last) - dt.timedelta(hours=hours - 1))
    held = [h for h in held_hours if earliest <= h <= last]
    return hour_range(min(held), last, hours) if held else []


def pair_rows(spans_by_hour: Mapping[str, HourSpans], hours: list[str], cell_seconds: int = 60,
              now: dt.datetime | None = None) -> list[str]:
    """Rows for consecutive `hours` of one (channel, quality); an hour absent from
    `spans_by_hour` is all holes. With `now`, the not-yet part is FUTURE."""
    rows = []
    for hour in hours:
        start = parse_hour(hour)
        previous = spans_by_hour.get(format_hour(start - ONE_HOUR), EMPTY)
        future_from = None
        if now is not None and now < start + ONE_HOUR:
            future_from = (now - start).total_seconds()
        rows.append(hour_row(spans_by_hour.get(hour, EMPTY), previous, cell_seconds,
                             future_from))
    return rows


def _rank(code: str) -> int:
    return {FULL: 3, PARTIAL: 2, TOMBSTONED: 1, HOLE: 1, FUTURE: 0}[code]


def diff_row(a: str, b: str) -> str:
    """Cell by cell, how node A's row compares with node B's (rows of equal length)."""
    if len(a) != len(b):
        raise CoverageError(f"rows of {len(a)} and {len(b)} cells cannot be compared")
    out = []
    for x, y in zip(a, b, strict=True):
        if x == y:
            out.append(SAME)
        elif TOMBSTONED in (x, y) and _rank(x) == _rank(y):
            out.append(TOMB_DIFF)
        else:
            out.append(A_ONLY if _rank(x) > _rank(y) else B_ONLY)
    return "".join(out)


def count_cells(rows: Iterable[str]) -> dict[str, int]:
    """How many cells of each code: a map's one-line summary."""
    counts: dict[str, int] = {}
    for row in rows:
        for code in row:
            counts[code] = counts.get(code, 0) + 1
    return counts
