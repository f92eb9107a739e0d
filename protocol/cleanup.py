"""Decisions of the operator's clean-up tools, as pure functions.

- purge: a tombstoned segment's `.ts` may be deleted only once every known peer
  holds the tombstone (otherwise a peer could still serve it, or it could come back).
- dupes: among the versions of one segment (same start time), the best-version rule
  keeps one; the others are the losers an operator may tombstone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .selection import Candidate, explain_choice, pick_best, version_key

# what one peer said about one tombstone: True (holds it), False (lacks it),
# or a string: why it could not be asked
PeerAnswer = bool | str


@dataclass(frozen=True, slots=True)
class PurgeDecision:
    segment_path: str
    delete: bool
    reason: str


def purge_decision(
    segment_path: str, peers: Sequence[str], answers: Mapping[str, PeerAnswer]
) -> PurgeDecision:
    """Delete `segment_path` only if there are peers and every one holds its tombstone."""
    if not peers:
        return PurgeDecision(segment_path, False,
                             "no peers known: cannot confirm the tombstone is anywhere else")
    lacking = [p for p in peers if answers.get(p) is False]
    unknown = [(p, answers.get(p)) for p in peers
               if answers.get(p) is not True and answers.get(p) is not False]
    if not lacking and not unknown:
        return PurgeDecision(segment_path, True, f"tombstone held by all {len(peers)} peers")
    reasons = []
    if lacking:
        reasons.append("tombstone missing on " + ", ".join(lacking))
    for peer, why in unknown:
        reasons.append(f"could not ask {peer}: {why or 'no answer'}")
    return PurgeDecision(segment_path, False, "; ".join(reasons))


@dataclass(frozen=True)
class DupeGroup:
    """Several versions of the segment starting at `start`: one kept, the rest lose."""

    start: dt.datetime
    keep: Candidate
    losers: list[tuple[Candidate, str]] = field(default_factory=list)  # (version, why it loses)


def duplicate_groups(candidates: Iterable[Candidate]) -> list[DupeGroup]:
    """Start times with more than one usable version, by start time; best loser first."""
    by_start: dict[dt.datetime, list[Candidate]] = {}
    for c in candidates:
        if not c.name.replicable:
            continue  # temp versions are never used, so never compete
        by_start.setdefault(c.name.start, []).append(c)
    groups = []
    for start in sorted(by_start):
        versions = by_start[start]
        best = pick_best(versions)
        assert best is not None
        if len(versions) < 2:
            continue
        others = sorted((c for c in versions if c is not best), key=version_key, reverse=True)
        groups.append(DupeGroup(start, best, [(c, explain_choice(best, c)) for c in others]))
    return groups

