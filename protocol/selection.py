"""Which version of a segment a consumer (restream, cutter) uses, and where the holes are."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

from .names import SegmentName

TYPE_RANK = {"full": 3, "suspect": 2, "partial": 1}
HOLE_TOLERANCE = dt.timedelta(milliseconds=10)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A segment version on disk, with its size (the name does not carry it)."""

    name: SegmentName
    size: int


@dataclass(frozen=True, slots=True)
class Hole:
    """A gap in coverage longer than the tolerance."""

    start: dt.datetime
    end: dt.datetime


def version_key(c: Candidate) -> tuple:
    """Sort key, higher is better: full > suspect > partial; then longer, larger, higher hash."""
    return (TYPE_RANK[c.name.type], c.name.duration, c.size, c.name.hash)


def explain_choice(best: Candidate, other: Candidate) -> str:
    """Why `best` wins over `other`, in the words an operator reads."""
    a, b = best.name, other.name
    if a.type != b.type:
        return f"{a.type} beats {b.type}"
    if a.duration != b.duration:
        return f"longer duration ({a.duration:f} s > {b.duration:f} s)"
    if best.size != other.size:
        return f"larger file ({best.size} > {other.size} bytes)"
    return "higher hash (tie-break)"


def pick_best(candidates: Iterable[Candidate]) -> Candidate | None:
    """The best usable version among versions of one segment; temp never wins."""
    usable = [c for c in candidates if c.name.type in TYPE_RANK]
    return max(usable, key=version_key, default=None)


def best_segments(
    candidates: Iterable[Candidate], start: dt.datetime, end: dt.datetime
) -> list[Candidate | Hole]:
    """The versions covering [start, end), best per start time, with holes marked.

    Candidates must already exclude tombstoned segments; temp ones are ignored here.
    """
    by_start: dict[dt.datetime, list[Candidate]] = {}
    for c in candidates:
        if c.name.type not in TYPE_RANK:
            continue
        if c.name.end <= start or c.name.start >= end:
            continue
        by_start.setdefault(c.name.start, []).append(c)
    out: list[Candidate | Hole] = []
    covered_until = start
    for seg_start in sorted(by_start):
        best = pick_best(by_start[seg_start])
        assert best is not None
        if seg_start - covered_until > HOLE_TOLERANCE:
            out.append(Hole(covered_until, seg_start))
        out.append(best)
        covered_until = max(covered_until, best.name.end)
    if end - covered_until > HOLE_TOLERANCE:
        out.append(Hole(covered_until, end))
    return out
