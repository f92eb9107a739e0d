"""When a node must read an hour directory again for tombstones, and what it finds.

An operator's `touch NAME.tombstone` hides NAME.ts at once, but the index learns of
the file only when the watcher reports it. So a listing of an hour looks at the
directory first, and cheaply: creating, renaming or removing an entry changes the
directory's mtime and ctime, so while both are what they were when the directory was
last read, no tombstone can have appeared in it since (one `stat`, not a read).

Racily clean reads (git's term): timestamps have a granularity (a kernel tick; a
second or two on some file systems), and an entry made in the same tick as the read,
just after it, leaves the stamp as it was. A stamp is therefore remembered only when
it is safely older than the moment the directory was read (`margin_ns`); otherwise
the next listing reads the directory again. `read_at_ns` comes from the wall clock,
which is the clock a local file system stamps with.

Pure: the caller stats, reads and keeps the remembered stamps.
"""

from __future__ import annotations

from typing import Container, Iterable

# one stamp and one margin for every "has this directory moved?" question: the
# persistent index's listings (protocol/index/listing_stamp.py) and these reads
from .index.listing_stamp import RACY_MARGIN_NS, DirStamp
from .names import TOMBSTONE_SUFFIX

__all__ = ["RACY_MARGIN_NS", "DirStamp", "stamp_to_remember", "must_read",
           "unindexed_tombstones"]


def stamp_to_remember(stamp: DirStamp, read_at_ns: int,
                      margin_ns: int = RACY_MARGIN_NS) -> DirStamp | None:
    """After reading a directory whose stamp (taken before the read) was `stamp`:
    the stamp that vouches for what was read, or None when it is too recent to
    (a change in the same tick could leave it unchanged)."""
    newest = max(stamp.mtime_ns, stamp.ctime_ns)
    return stamp if newest <= read_at_ns - margin_ns else None


def must_read(remembered: DirStamp | None, now: DirStamp | None) -> bool:
    """Whether the directory (stamp `now`, None: it does not exist) must be read for
    tombstones, given the stamp remembered from its last read (None: never read, or
    read racily). A directory that does not exist holds no tombstone."""
    if now is None:
        return False
    return remembered != now


def unindexed_tombstones(filenames: Iterable[str], indexed: Container[str]) -> list[str]:
    """The tombstone file names of a directory read that the index does not hold
    (sorted; dot-files are never archive files)."""
    return sorted(n for n in filenames
                  if n.endswith(TOMBSTONE_SUFFIX) and not n.startswith(".")
                  and n not in indexed)
