"""Pure replication decisions: offer replies, what to fetch, which hours to compare."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence, TypeVar

from .errors import SegmentNameError
from .names import Kind, SegmentName, parse_filename, tombstone_filename_for
from .recording import NearDuplicates

T = TypeVar("T")


def offer_status(has_segment: bool, has_tombstone: bool) -> str:
    """A peer offers a segment: 'tombstoned' beats 'have' beats 'want'."""
    if has_tombstone:
        return "tombstoned"
    if has_segment:
        return "have"
    return "want"


@dataclass
class FetchPlan:
    """What one hour's comparison asks of us."""

    fetch: list[SegmentName] = field(default_factory=list)
    tombstones: list[SegmentName] = field(default_factory=list)
    skipped_recent: int = 0
    skipped_temp: int = 0
    skipped_tombstoned: int = 0
    skipped_near_duplicate: int = 0
    invalid: int = 0


def plan_hour(
    channel: str,
    quality: str,
    hour: str,
    peer_names: Iterable[str],
    local_names: frozenset[str] | set[str],
    now: dt.datetime,
    recent_window: float,
) -> FetchPlan:
    """Missing = the peer's replicable listing minus ours minus our tombstones.

    `local_names` is every segment and tombstone file name we hold in that hour
    (hidden segments included). Tombstones are always taken; segments that started
    within `recent_window` seconds of `now` are left for a later round.
    """
    plan = FetchPlan()
    near: NearDuplicates | None = None  # built on the first name that needs it
    cutoff = now - dt.timedelta(seconds=recent_window)
    for filename in peer_names:
        if filename in local_names:
            continue
        try:
            name, kind = parse_filename(channel, quality, hour, filename)
        except SegmentNameError:
            plan.invalid += 1
            continue
        if kind is Kind.TOMBSTONE:
            plan.tombstones.append(name)
            continue
        if not name.replicable:
            plan.skipped_temp += 1
        elif tombstone_filename_for(filename) in local_names:
            plan.skipped_tombstoned += 1
        elif name.start > cutoff:
            plan.skipped_recent += 1
        else:
            if near is None:
                near = NearDuplicates(channel, quality, hour, local_names)
            if name in near:
                plan.skipped_near_duplicate += 1
            else:
                plan.fetch.append(name)
    # newest first: the freshest video is the most likely to be watched
    plan.fetch.sort(key=lambda n: n.start, reverse=True)
    return plan


def differing_keys(local: Mapping, remote: Mapping) -> list:
    """Keys whose digests differ, including keys only the remote has.

    Keys only we have are not listed: pull never needs them (the peer pulls from us).
    """
    return [k for k, digest in remote.items() if local.get(k) != digest]


def newest_first(hours: Iterable[str]) -> list[str]:
    return sorted(hours, reverse=True)


def fetch_batches(names: Sequence[T], slots: int, max_batch: int) -> list[list[T]]:
    """Split what to download into batch fetches, in order.

    Few large batches pay the per-request cost rarely; but every download slot should
    get work, and the last batch should not leave the others idle for long. So a
    batch takes about a quarter of one slot's share, between 1 and `max_batch`.
    """
    if not names:
        return []
    per_slot = -(-len(names) // max(1, slots))
    size = max(1, min(max_batch, -(-per_slot // 4)))
    return [list(names[i:i + size]) for i in range(0, len(names), size)]
