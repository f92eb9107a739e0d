"""Hour and pair digests: the two levels of the Merkle comparison.

Two nodes whose digests agree hold the same replicable listing, so they need not
compare further. Digests depend only on names, never on file contents or order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Iterable

from .names import format_hour, parse_hour

EMPTY_DIGEST = hashlib.sha256(b"").digest()


def hour_digest(names: Iterable[str]) -> bytes:
    """Digest of one hour's replicable listing (segment and tombstone file names)."""
    ordered = sorted(names)
    if not ordered:
        return EMPTY_DIGEST
    # each name and a newline: hashed as one buffer (one C call, not two per name)
    return hashlib.sha256(("\n".join(ordered) + "\n").encode("utf-8", "surrogateescape")).digest()


def pair_digest(hour_digests: Iterable[tuple[str, bytes]]) -> bytes:
    """Digest of a (channel, quality) over its non-empty hours' digests."""
    sha = hashlib.sha256()
    for hour, digest in sorted(hour_digests):
        sha.update(hour.encode("ascii"))
        sha.update(digest)
    return sha.digest()


def hour_range(now: dt.datetime, backfill_hours: int) -> tuple[str, str]:
    """The hours a backfill round covers: the current hour back `backfill_hours`."""
    last = now.astimezone(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    first = last - dt.timedelta(hours=max(0, backfill_hours))
    return format_hour(first), format_hour(last)


def hour_in_range(hour: str, first: str, last: str) -> bool:
    """Hours sort as text, so a range check is a string comparison."""
    return first <= hour <= last


def hours_between(first: str, last: str) -> list[str]:
    """Every hour from `last` back to `first`, newest first."""
    lo, hi = parse_hour(first), parse_hour(last)
    if hi < lo:
        return []
    # Count down by index, never stepping below `lo` (which may be year 1).
    count = (hi - lo) // dt.timedelta(hours=1)
    return [format_hour(hi - dt.timedelta(hours=i)) for i in range(count + 1)]
