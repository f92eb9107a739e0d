"""When a stored hour listing may be trusted without reading the directory again.

A directory's mtime and ctime change whenever an entry is added, removed or renamed,
so a listing taken when the directory had stamp S is still the directory's listing
while the stamp is still S. Two traps, both handled here:

- Racily clean listings (git's term): timestamps have a granularity (a kernel tick,
  a second on some file systems) and a change made in the same tick as the listing,
  just after it, leaves the stamp unchanged. A listing is trusted only when the
  stamp it was taken at is safely in the past of the moment it was taken (by
  `margin_ns`); otherwise the hour is listed again.
- Restored mtimes: `rsync -a`, `touch -d` or a restore from backup can set an mtime
  back, never a ctime (the kernel sets it to "now" on every change, including the
  mtime change itself), so both are compared.

`listed_at_ns` is read from the same clock that stamps the directory (the agent takes
it from a file it touches in ROOT/.segsync/, so a network file system's server clock
is compared with itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

# Coarser than any timestamp granularity in use (FAT: 2 s; ext4/xfs: a kernel tick)
# plus the skew between the clock read for `listed_at_ns` and the stamping clock.
RACY_MARGIN_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class DirStamp:
    """A directory's mtime and ctime, in nanoseconds."""

    mtime_ns: int
    ctime_ns: int


@dataclass(frozen=True, slots=True)
class ListingStamp:
    """What a stored listing was taken at: the directory's stamp (read before the
    listing) and the time the listing began (on the directory's clock)."""

    stamp: DirStamp
    listed_at_ns: int

    def racy(self, margin_ns: int = RACY_MARGIN_NS) -> bool:
        """True when a change in the same timestamp tick as the listing could have
        left the stamp as it was: such a listing is never trusted."""
        newest = max(self.stamp.mtime_ns, self.stamp.ctime_ns)
        return newest >= self.listed_at_ns - margin_ns


def listing_trusted(stored: ListingStamp | None, current: DirStamp | None,
                    margin_ns: int = RACY_MARGIN_NS) -> bool:
    """May the stored listing stand for the directory, whose stamp is now `current`
    (None: the directory is gone)? Only when the stamps are equal and the stored
    listing is not racily clean."""
    if stored is None or current is None:
        return False
    return stored.stamp == current and not stored.racy(margin_ns)


@dataclass(frozen=True)
class SweepPlan:
    """What a warm start (or an mtime sweep) does with each hour directory."""

    trusted: list[str]   # the stored listing stands
    relist: list[str]    # listed again (new, changed, racy or never verified)
    gone: list[str]      # stored, but the directory is gone


def plan_sweep(stored: Mapping[str, ListingStamp | None], current: Mapping[str, DirStamp],
               margin_ns: int = RACY_MARGIN_NS) -> SweepPlan:
    """Compare the stored listings' stamps (None: the stored names were never checked
    against a listing) with the directories found now; keys are any hashable name of
    an hour directory. Lists come out sorted."""
    trusted, relist = [], []
    for key in sorted(current):
        (trusted if listing_trusted(stored.get(key), current[key], margin_ns)
         else relist).append(key)
    gone = sorted(k for k in stored if k not in current)
    return SweepPlan(trusted, relist, gone)
