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
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from .names import format_hour, parse_hour

HOUR_SECONDS = 3600

# cell codes, best first; one character each so an hour is a short string
FULL = "F"        # covered entirely by full segments
PARTIAL = "P"     # covered entirely, but somewhere only by suspect or partial ones
TOMBSTONED = "T"  # not fully covered by fulls, and a tombstoned segment starts here
HOLE = "H"        # some of it is covered by nothing
FUTURE = "-"      # starts after "now": nothing can be missing there yet
CELL_STATES = (FULL, PARTIAL, TOMBSTONED, HOLE, FUTURE)

# difference codes: a cell of node A against the same cell of node B
SAME = "="
A_ONLY = "A"      # A holds more there than B (B lacks it)
B_ONLY = "B"      # B holds more there than A
TOMB_DIFF = "T"   # a tombstone on one side only: it has not reached the other yet
DIFF_STATES = (SAME, A_ONLY, B_ONLY, TOMB_DIFF)

GAP_TOLERANCE = 0.001  # seconds: rounding between consecutive segments is no gap
MAX_MAP_HOURS = 24 * 366  # a map is bounded: one year of rows at most

_NAME = re.compile(
    r"([0-5][0-9]):([0-5][0-9]\.[0-9]{6})-([0-9]{1,9}(?:\.[0-9]{1,9})?)"
    r"-(full|suspect|partial|temp)-[A-Za-z0-9_-]{43}\.(ts|tombstone)\Z"
)

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
    segments: list[tuple[str, float, float, str]] = []
    tombstoned: dict[str, float] = {}
    for filename in filenames:
        match = _NAME.match(filename)
        if match is None:
            raise CoverageError(f"{filename!r} is not a segment or tombstone file name")
        minutes, seconds, duration, type_, suffix = match.groups()
        start = int(minutes) * 60 + float(seconds)
        stem = filename[: match.start(5) - 1]
        if suffix == "tombstone":
            tombstoned[stem] = start
        elif type_ != "temp":
            segments.append((stem, start, start + float(duration), type_))
    full, any_ = [], []
    for stem, start, end, type_ in segments:
        if stem in tombstoned:
            continue
        any_.append((start, end))
        if type_ == "full":
            full.append((start, end))
    return HourSpans(merge(full), merge(any_), tuple(sorted(tombstoned.values())))


def _spill(spans: HourSpans) -> HourSpans:
    """The part of an hour's coverage that runs into the next hour, shifted there."""
    def shift(intervals: tuple[Interval, ...]) -> tuple[Interval, ...]:
        return tuple((max(0.0, a - HOUR_SECONDS), b - HOUR_SECONDS)
                     for a, b in intervals if b > HOUR_SECONDS)
    return HourSpans(shift(spans.full), shift(spans.any))


def _covered(intervals: tuple[Interval, ...], cells: int, size: float) -> list[float]:
    """Seconds covered in each cell of `size` seconds."""
    out = [0.0] * cells
    for start, end in intervals:
        start, end = max(start, 0.0), min(end, cells * size)
        if end <= start:
            continue
        first, last = int(start // size), min(int((end - 1e-9) // size), cells - 1)
        for i in range(first, last + 1):
            out[i] += min(end, (i + 1) * size) - max(start, i * size)
    return out


def hour_row(spans: HourSpans, previous: HourSpans = EMPTY, cell_seconds: int = 60,
             future_from: float | None = None) -> str:
    """One hour as cell codes: 3600 / cell_seconds cells (60 minutes by default).

    `previous` is the hour before (its segments running past the hour boundary
    cover the start of this one). Cells starting at or after `future_from`
    (seconds into this hour, from the caller's clock) are FUTURE."""
    if cell_seconds <= 0 or HOUR_SECONDS % cell_seconds:
        raise CoverageError(f"cell size {cell_seconds} s does not divide an hour")
    cells = HOUR_SECONDS // cell_seconds
    spill = _spill(previous)
    full = _covered(merge(spans.full + spill.full), cells, cell_seconds)
    any_ = _covered(merge(spans.any + spill.any), cells, cell_seconds)
    tombs = {int(t // cell_seconds) for t in spans.tombstones}
    need = cell_seconds - 1e-6
    row = []
    for i in range(cells):
        if future_from is not None and i * cell_seconds >= future_from:
            row.append(FUTURE)
        elif full[i] >= need:
            row.append(FULL)
        elif i in tombs:
            row.append(TOMBSTONED)
        elif any_[i] >= need:
            row.append(PARTIAL)
        else:
            row.append(HOLE)
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
        previous = spans_by_hour.get(
            format_hour(parse_hour(hour) - dt.timedelta(hours=1)), EMPTY)
        future_from = None
        if now is not None:
            future_from = (now - parse_hour(hour)).total_seconds()
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
    for x, y in zip(a, b):
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
