"""Which quarantined segments are lost (protocol.scrub.lost_segments): in quarantine
with no good copy in the archive. The scrub retries exactly these."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from helpers import make_name
from protocol.scrub import lost_segments, quarantine_relpath, quarantined_segment

START = dt.datetime(2026, 12, 6, 18, 0, tzinfo=dt.timezone.utc)


def path(n: int, hours: int = 0, channel: str = "desertbus") -> str:
    return make_name(bytes([n]), START + dt.timedelta(hours=hours, seconds=2 * n),
                     channel=channel).path


def test_quarantined_segment_inverts_quarantine_relpath():
    p = path(1)
    for attempt in (0, 1, 2, 17):
        assert quarantined_segment(quarantine_relpath(p, attempt)) == p


def test_what_is_not_a_quarantined_segment_is_none():
    p = path(1)
    tombstone = p[: -len(".ts")] + ".tombstone"
    for junk in (p, f"elsewhere/{p}", f".quarantine/{tombstone}", f".quarantine/{p}.0",
                 f".quarantine/{p}.x", f".quarantine/{p}.-1", ".quarantine/notes.txt",
                 ".quarantine/a/b/c", f".quarantine/{p}.tmp", ""):
        assert quarantined_segment(junk) is None, junk


def test_lost_are_those_without_a_good_copy_each_once_oldest_hour_first():
    old, new, healed = path(1, hours=-2), path(2), path(3, hours=-1)
    other_channel = path(4, hours=-2, channel="aaa")
    listed = [quarantine_relpath(new), quarantine_relpath(new, 1),  # rotted twice
              quarantine_relpath(old), quarantine_relpath(healed),
              quarantine_relpath(other_channel), ".quarantine/README"]
    in_archive = {healed}.__contains__
    assert lost_segments(listed, in_archive) == [other_channel, old, new]
    assert lost_segments(listed, lambda p: True) == []
    assert lost_segments([], in_archive) == []


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(-3, 0), st.integers(0, 3)),
                max_size=30),
       st.sets(st.integers(0, 20)))
def test_lost_segments_properties(entries, present_numbers):
    listed = [quarantine_relpath(path(n, h), attempt) for n, h, attempt in entries]
    present = {path(n, h) for n, h, _ in entries if n in present_numbers}
    lost = lost_segments(listed, present.__contains__)
    expected = {path(n, h) for n, h, _ in entries} - present
    assert set(lost) == expected and len(lost) == len(expected)
    keys = [(p.split("/")[2], p.split("/")[0], p.split("/")[1], p.split("/")[3]) for p in lost]
    assert keys == sorted(keys)
