"""Pure decisions: when an hour directory is read again for tombstones, what it finds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocol.tombstone_freshness import (
    RACY_MARGIN_NS,
    DirStamp,
    must_read,
    stamp_to_remember,
    unindexed_tombstones,
)

S = 1_000_000_000
T0 = 1_700_000_000 * S  # some wall-clock moment


def test_an_old_stamp_vouches_for_the_read():
    stamp = DirStamp(T0, T0)
    assert stamp_to_remember(stamp, T0 + RACY_MARGIN_NS) == stamp
    assert stamp_to_remember(stamp, T0 + 60 * S) == stamp


def test_a_racy_stamp_is_not_remembered():
    """A change in the same tick as the read could leave the stamp as it was."""
    assert stamp_to_remember(DirStamp(T0, T0), T0) is None
    assert stamp_to_remember(DirStamp(T0, T0), T0 + RACY_MARGIN_NS - 1) is None
    # the newer of mtime and ctime counts: an mtime set back (touch -d) is not enough
    assert stamp_to_remember(DirStamp(T0 - 3600 * S, T0), T0 + S) is None
    # a clock that stepped back below the stamp: never trusted
    assert stamp_to_remember(DirStamp(T0, T0), T0 - 10 * S) is None


def test_margin_is_a_parameter():
    assert stamp_to_remember(DirStamp(T0, T0), T0 + 10, margin_ns=10) == DirStamp(T0, T0)
    assert stamp_to_remember(DirStamp(T0, T0), T0 + 9, margin_ns=10) is None


def test_must_read_unless_the_stamp_is_the_remembered_one():
    stamp = DirStamp(T0, T0 + 5)
    assert not must_read(stamp, DirStamp(T0, T0 + 5))
    assert must_read(None, stamp)  # never read, or read racily
    assert must_read(stamp, DirStamp(T0 + 1, T0 + 5))  # an entry added or removed
    assert must_read(stamp, DirStamp(T0, T0 + 6))  # mtime restored, ctime moved on
    assert not must_read(stamp, None)  # no directory: no tombstone in it
    assert not must_read(None, None)


@given(st.integers(0, 2**62), st.integers(0, 2**62), st.integers(0, 2**62))
def test_a_remembered_stamp_is_never_racy(mtime, ctime, read_at):
    """Whatever the clocks say: a remembered stamp is older than the read it vouches
    for by the margin, so a change stamped by a clock that lags the read's clock by
    less than the margin moves the stamp, and the directory is read again."""
    stamp = DirStamp(mtime, ctime)
    kept = stamp_to_remember(stamp, read_at)
    if kept is None:
        assert max(mtime, ctime) > read_at - RACY_MARGIN_NS
        return
    assert kept == stamp
    for changed_at in (read_at - RACY_MARGIN_NS + 1, read_at, read_at + S):
        assert must_read(kept, DirStamp(changed_at, changed_at))


def test_unindexed_tombstones():
    on_disk = ["00:00.000000-2.0-full-A.ts", "00:00.000000-2.0-full-A.ts.tombstone",
               "00:02.000000-2.0-full-B.ts.tombstone", ".segsync-1234.tmp",
               ".hidden.tombstone", "00:04.000000-2.0-full-C.ts.tombstone"]
    indexed = {"00:00.000000-2.0-full-A.ts", "00:04.000000-2.0-full-C.ts.tombstone"}
    assert unindexed_tombstones(on_disk, indexed) == [
        "00:00.000000-2.0-full-A.ts.tombstone", "00:02.000000-2.0-full-B.ts.tombstone"]
    assert unindexed_tombstones([], indexed) == []
    assert unindexed_tombstones(on_disk, set(on_disk)) == []
