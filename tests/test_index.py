"""The in-memory archive index: what a round compares without reading a directory."""

from __future__ import annotations

import datetime as dt
import gc
import os
import random
import tracemalloc
from decimal import Decimal

import pytest

import agent.archive.index as index_module
from agent.archive.index import ArchiveIndex
from agent.archive.store import Store
from helpers import make_name, touch_tombstone, write_segment_file
from protocol.digests import hour_digest, pair_digest
from protocol.hashing import encode_hash
from protocol.names import Kind, SegmentName, format_hour, parse_path

UTC = dt.timezone.utc
T0 = dt.datetime(2019, 11, 13, 2, 0, 0, tzinfo=UTC)
FIRST, LAST = "2019-11-01T00", "2019-11-30T23"


def seg(i: int, hour_offset: int = 0, channel: str = "desertbus", quality: str = "source",
        type_: str = "full"):
    start = T0 + dt.timedelta(hours=hour_offset, seconds=2 * i)
    digest = encode_hash(random.Random(f"{channel}{quality}{hour_offset}{i}{type_}").randbytes(32))
    return parse_path(f"{channel}/{quality}/{start:%Y-%m-%dT%H}/{start:%M:%S.%f}-2.0-"
                      f"{type_}-{digest}.ts")[0]


def digest_of(idx: ArchiveIndex, name) -> bytes:
    return dict(idx.hour_digests(name.channel, name.quality, FIRST, LAST)).get(name.hour)


def test_add_and_discard():
    idx = ArchiveIndex()
    a, b = seg(1), seg(2)
    v0 = idx.version
    assert idx.add(a, Kind.SEGMENT) is True
    assert idx.add(a, Kind.SEGMENT) is False  # already there
    assert idx.add(b, Kind.SEGMENT) is True
    assert idx.has(a, Kind.SEGMENT) and not idx.has(a, Kind.TOMBSTONE)
    assert idx.version == v0 + 2
    assert idx.pairs() == [("desertbus", "source")]
    assert idx.hours("desertbus", "source") == ["2019-11-13T02"]
    assert idx.segment_count() == 2
    assert idx.discard(a, Kind.SEGMENT) is True
    assert idx.discard(a, Kind.SEGMENT) is False
    assert not idx.has(a, Kind.SEGMENT)
    assert idx.discard(b, Kind.SEGMENT) is True
    # the last file of a pair takes the pair's entries with it
    assert idx.pairs() == [] and idx.hours("desertbus", "source") == []
    assert idx.segment_count() == 0
    assert idx.discard(seg(9, channel="other"), Kind.TOMBSTONE) is False


def test_temp_segments_are_never_indexed():
    idx = ArchiveIndex()
    t = seg(1, type_="temp")
    assert idx.add(t, Kind.SEGMENT) is False
    assert idx.pairs() == [] and not idx.has(t, Kind.SEGMENT)


def test_hidden_segments_are_held_but_not_listed():
    idx = ArchiveIndex()
    visible, hidden = seg(1), seg(2)
    for n in (visible, hidden):
        idx.add(n, Kind.SEGMENT)
    idx.add(hidden, Kind.TOMBSTONE)
    h = visible.hour
    assert idx.names("desertbus", "source", h) == {
        visible.filename, hidden.filename, hidden.tombstone_filename}
    assert idx.replicable("desertbus", "source", h) == sorted(
        [visible.filename, hidden.tombstone_filename])
    assert idx.visible_segments("desertbus", "source", h) == [visible.filename]
    assert idx.tombstones("desertbus", "source", h) == [hidden.tombstone_filename]
    # a tombstone alone (segment deleted by the operator) still counts
    idx.discard(hidden, Kind.SEGMENT)
    assert idx.replicable("desertbus", "source", h) == sorted(
        [visible.filename, hidden.tombstone_filename])
    assert idx.has(hidden, Kind.TOMBSTONE)


def test_digests_match_the_replicable_listing_and_change_exactly_when_it_does():
    idx = ArchiveIndex()
    a, b, c = seg(1), seg(2), seg(3)

    def expected():
        return hour_digest(idx.replicable(a.channel, a.quality, a.hour))

    steps = [  # (change, does the replicable listing change?)
        (lambda: idx.add(a, Kind.SEGMENT), True),
        (lambda: idx.add(a, Kind.SEGMENT), False),      # duplicate
        (lambda: idx.add(b, Kind.TOMBSTONE), True),     # tombstone without its segment
        (lambda: idx.add(b, Kind.SEGMENT), False),      # hidden as it arrives
        (lambda: idx.discard(b, Kind.SEGMENT), False),  # the operator deletes the hidden .ts
        (lambda: idx.add(c, Kind.SEGMENT), True),
        (lambda: idx.add(c, Kind.TOMBSTONE), True),     # c becomes hidden, its tombstone shows
        (lambda: idx.add(seg(4, type_="temp"), Kind.SEGMENT), False),
        (lambda: idx.add(seg(5, hour_offset=1), Kind.SEGMENT), False),  # another hour
        (lambda: idx.discard(a, Kind.SEGMENT), True),
    ]
    previous = digest_of(idx, a)
    assert previous is None
    for number, (change, changes) in enumerate(steps):
        change()
        now = digest_of(idx, a)
        assert now == expected(), number
        assert (now != previous) == changes, number
        previous = now
    # the listing itself
    assert idx.replicable(a.channel, a.quality, a.hour) == sorted(
        [b.tombstone_filename, c.tombstone_filename])


def test_digests_match_the_store_on_a_real_archive(tmp_path):
    store = Store(tmp_path)
    names = []
    for i in range(12):
        data = os.urandom(100 + i)
        name = make_name(data, T0 + dt.timedelta(minutes=25 * i),
                         quality="source" if i % 3 else "480p")
        write_segment_file(tmp_path, name, data)
        names.append(name)
    touch_tombstone(tmp_path, names[2])
    touch_tombstone(tmp_path, names[5])
    (tmp_path / names[5].path).unlink()
    (tmp_path / names[0].hour_path / ".segsync-0123.tmp").write_bytes(b"junk")
    idx = ArchiveIndex()
    for channel, quality, hour, raw in store.scan():
        listing = store.list_hour(channel, quality, hour)
        for f in listing.segments + listing.hidden + listing.tombstones:
            idx.add(*parse_path(f"{channel}/{quality}/{hour}/{f}"))
    compared = 0
    for channel, quality in store.pairs():
        for hour in store.hours(channel, quality):
            assert dict(idx.hour_digests(channel, quality, FIRST, LAST))[hour] == \
                store.hour_digest(channel, quality, hour)
            assert idx.replicable(channel, quality, hour) == \
                store.list_hour(channel, quality, hour).replicable
            compared += 1
    assert compared >= 4


def test_pair_digests_cover_the_range_only():
    idx = ArchiveIndex()
    for h in range(4):
        idx.add(seg(1, hour_offset=h), Kind.SEGMENT)
    idx.add(seg(1, quality="480p", hour_offset=3), Kind.SEGMENT)
    first, last = "2019-11-13T03", "2019-11-13T04"
    pairs = {(c, q): d for c, q, d in idx.pair_digests(first, last)}
    hours = idx.hour_digests("desertbus", "source", first, last)
    assert [h for h, _ in hours] == ["2019-11-13T03", "2019-11-13T04"]
    assert pairs[("desertbus", "source")] == pair_digest(hours)
    # a pair with nothing in range is left out
    assert ("desertbus", "480p") not in pairs
    assert ("desertbus", "480p") in {(c, q) for c, q, _ in idx.pair_digests(FIRST, LAST)}
    # a change outside the range leaves the pair digest alone; one inside changes it
    before = dict(((c, q), d) for c, q, d in idx.pair_digests(first, last))
    idx.add(seg(2, hour_offset=0), Kind.SEGMENT)
    assert dict(((c, q), d) for c, q, d in idx.pair_digests(first, last)) == before
    idx.add(seg(2, hour_offset=2), Kind.SEGMENT)
    assert dict(((c, q), d) for c, q, d in idx.pair_digests(first, last)) != before


def scanned_of(idx: ArchiveIndex):
    return [(c, q, h, sorted(idx.names(c, q, h))) for c, q in idx.pairs() for h in idx.hours(c, q)]


def test_replace_all_keeps_cached_digests(monkeypatch):
    idx = ArchiveIndex()
    for h in range(3):
        for i in range(5):
            idx.add(seg(i, hour_offset=h), Kind.SEGMENT)
    before = idx.pair_digests(FIRST, LAST)
    calls = []
    real = index_module.hour_digest
    monkeypatch.setattr(index_module, "hour_digest", lambda names: calls.append(1) or real(names))
    scan = scanned_of(idx)
    # the scan finds one hour changed on disk (an event was lost)
    lost = seg(7, hour_offset=1)
    scan = [(c, q, h, names + [lost.filename] if h == lost.hour else names)
            for c, q, h, names in scan]
    idx.begin_rebuild()
    idx.replace_all(scan)
    after = idx.pair_digests(FIRST, LAST)
    assert len(calls) == 1  # only the changed hour was hashed again
    assert idx.has(lost, Kind.SEGMENT)
    assert after != before
    idx.pair_digests(FIRST, LAST)
    assert len(calls) == 1


def test_replace_all_replays_changes_made_during_the_scan():
    idx = ArchiveIndex()
    kept, deleted = seg(1), seg(2)
    idx.add(kept, Kind.SEGMENT)
    idx.add(deleted, Kind.SEGMENT)
    idx.begin_rebuild()
    scan = scanned_of(idx)  # taken while the changes below happen
    arrived, tombstoned = seg(3), seg(4, hour_offset=1)
    idx.add(arrived, Kind.SEGMENT)
    idx.discard(deleted, Kind.SEGMENT)
    idx.add(tombstoned, Kind.TOMBSTONE)
    idx.replace_all(scan)
    assert idx.has(kept, Kind.SEGMENT)
    assert idx.has(arrived, Kind.SEGMENT)
    assert not idx.has(deleted, Kind.SEGMENT)
    assert idx.has(tombstoned, Kind.TOMBSTONE)
    # no journal after the swap: later changes are plain changes
    idx.replace_all(scanned_of(idx))
    assert idx.has(arrived, Kind.SEGMENT) and not idx.has(deleted, Kind.SEGMENT)


def test_overlapping_rebuilds_keep_the_journal_for_the_later_one():
    idx = ArchiveIndex()
    idx.begin_rebuild()
    first_scan = scanned_of(idx)
    idx.begin_rebuild()
    second_scan = scanned_of(idx)
    a = seg(1)
    idx.add(a, Kind.SEGMENT)  # after both scans read the directory
    idx.replace_all(first_scan)
    assert idx.has(a, Kind.SEGMENT)
    b = seg(2)
    idx.add(b, Kind.SEGMENT)
    idx.replace_all(second_scan)
    assert idx.has(a, Kind.SEGMENT) and idx.has(b, Kind.SEGMENT)


def test_a_full_scan_drops_what_is_gone():
    idx = ArchiveIndex()
    gone, stays = seg(1), seg(2, quality="480p")
    idx.add(gone, Kind.SEGMENT)
    idx.add(stays, Kind.SEGMENT)
    idx.begin_rebuild()
    idx.replace_all([(stays.channel, stays.quality, stays.hour, [stays.filename])])
    assert not idx.has(gone, Kind.SEGMENT) and idx.pairs() == [("desertbus", "480p")]


def test_memory_per_indexed_segment_is_bounded():
    """<= 300 bytes per segment digests included, over 100k real-shaped names."""
    count = 100_000
    rng = random.Random(5)
    duration = Decimal("2.002")
    names = []
    for i in range(count):
        start = T0 + dt.timedelta(seconds=2 * i + rng.random())
        names.append(SegmentName("desertbus", ("source", "720p", "480p")[i % 3],
                                 format_hour(start), start, duration, "full", rng.randbytes(32)))
    parse_path(names[-1].path)  # real-shaped: the names parse
    gc.collect()
    tracemalloc.start()
    try:
        idx = ArchiveIndex()
        base = tracemalloc.get_traced_memory()[0]
        for name in names:
            idx.add(name, Kind.SEGMENT)
        assert idx.pair_digests("2019-11-01T00", "2019-12-31T23")  # digests cached too
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert idx.segment_count() == count
    per_segment = used / count
    assert per_segment <= 300, f"{per_segment:.0f} bytes per indexed segment"


@pytest.mark.parametrize("kind", [Kind.SEGMENT, Kind.TOMBSTONE])
def test_has_is_per_kind(kind):
    idx = ArchiveIndex()
    n = seg(1)
    idx.add(n, kind)
    other = Kind.TOMBSTONE if kind is Kind.SEGMENT else Kind.SEGMENT
    assert idx.has(n, kind) and not idx.has(n, other)
