"""Which version of a segment consumers use, and where the holes are."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.hashing import encode_hash
from protocol.names import SegmentName, parse_path
from protocol.selection import (
    HOLE_TOLERANCE,
    TYPE_RANK,
    Candidate,
    Hole,
    best_segments,
    explain_choice,
    pick_best,
    version_key,
)

UTC = dt.timezone.utc
HOUR = dt.datetime(2019, 11, 13, 2, tzinfo=UTC)


def candidate(
    offset: float = 0.0,
    duration: str = "2.0",
    type_: str = "full",
    size: int = 1000,
    hash_byte: int = 1,
) -> Candidate:
    """A real, parsed name starting `offset` seconds into HOUR."""
    start = HOUR + dt.timedelta(seconds=offset)
    hash_text = encode_hash(bytes([hash_byte]) * 32)
    name, _ = parse_path(
        f"desertbus/source/2019-11-13T02/{start:%M:%S.%f}-{duration}-{type_}-{hash_text}.ts"
    )
    return Candidate(name, size)


def at(seconds: float) -> dt.datetime:
    return HOUR + dt.timedelta(seconds=seconds)


# ---- pick_best ----

def test_full_beats_suspect_beats_partial():
    full = candidate(type_="full", duration="1.0", size=1, hash_byte=0)
    suspect = candidate(type_="suspect", duration="2.0", size=9999, hash_byte=255)
    partial = candidate(type_="partial", duration="3.0", size=99999, hash_byte=254)
    assert pick_best([partial, suspect, full]) == full
    assert pick_best([partial, suspect]) == suspect
    assert pick_best([suspect, partial]) == suspect
    assert pick_best([partial]) == partial
    assert TYPE_RANK["full"] > TYPE_RANK["suspect"] > TYPE_RANK["partial"]


def test_among_fulls_longer_duration_wins():
    short = candidate(duration="2.0", size=5000, hash_byte=255)
    longer = candidate(duration="2.002", size=10, hash_byte=0)
    assert pick_best([short, longer]) == longer
    assert pick_best([longer, short]) == longer


def test_duration_compares_as_number_not_text():
    ten = candidate(duration="10.0", size=1)
    nine = candidate(duration="9.5", size=2)
    assert pick_best([nine, ten]) == ten


def test_then_larger_file_wins():
    small = candidate(size=100, hash_byte=255)
    large = candidate(size=101, hash_byte=0)
    assert pick_best([small, large]) == large
    assert pick_best([large, small]) == large


def test_then_higher_hash_wins():
    low = candidate(hash_byte=1)
    high = candidate(hash_byte=2)
    assert pick_best([low, high]) == high
    assert pick_best([high, low]) == high


def test_equal_durations_with_different_text_tie_on_size():
    a = candidate(duration="2.0", size=10, hash_byte=9)
    b = candidate(duration="2.00", size=20, hash_byte=1)
    assert pick_best([a, b]) == b


def test_temp_is_never_picked():
    temp = candidate(type_="temp", duration="99.0", size=10**9, hash_byte=255)
    partial = candidate(type_="partial", duration="0.1", size=1, hash_byte=0)
    assert pick_best([temp]) is None
    assert pick_best([temp, temp]) is None
    assert pick_best([temp, partial]) == partial
    assert pick_best([]) is None


def test_version_key_orders_all_rules():
    cands = [
        candidate(type_="partial", duration="5.0"),
        candidate(type_="suspect", duration="1.0"),
        candidate(type_="full", duration="1.0", size=5, hash_byte=9),
        candidate(type_="full", duration="1.0", size=6, hash_byte=1),
        candidate(type_="full", duration="1.0", size=6, hash_byte=2),
        candidate(type_="full", duration="2.0", size=1, hash_byte=0),
    ]
    shuffled = list(cands)
    random.Random(4).shuffle(shuffled)
    assert sorted(shuffled, key=version_key) == cands


def test_a_better_version_that_ends_before_the_range_does_not_hide_one_that_covers_it():
    suspect = candidate(0, duration="2.0", type_="suspect")
    full = candidate(0, duration="0.5", type_="full")
    assert best_segments([suspect, full], at(0.5), at(0.501)) == [suspect]
    assert best_segments([suspect, full], at(0), at(0.4)) == [full]


@settings(max_examples=200)
@given(st.lists(
    st.tuples(st.sampled_from(["full", "suspect", "partial", "temp"]),
              st.sampled_from(["1.0", "2.0", "2.002", "0.5"]),
              st.integers(0, 3), st.integers(0, 3)),
    max_size=8,
), st.randoms())
def test_pick_best_is_order_independent_and_maximal(specs, rnd):
    cands = [candidate(type_=t, duration=d, size=s, hash_byte=h) for t, d, s, h in specs]
    best = pick_best(cands)
    usable = [c for c in cands if c.name.type != "temp"]
    if not usable:
        assert best is None
        return
    assert best in usable
    for c in usable:
        assert version_key(c) <= version_key(best)
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    assert version_key(pick_best(shuffled)) == version_key(best)


# ---- explain_choice ----

def test_explain_type():
    full, suspect, partial = (candidate(type_=t) for t in ("full", "suspect", "partial"))
    assert explain_choice(full, suspect) == "full beats suspect"
    assert explain_choice(suspect, partial) == "suspect beats partial"
    assert explain_choice(full, partial) == "full beats partial"


def test_explain_duration():
    assert explain_choice(candidate(duration="2.002"), candidate(duration="2.0")) == (
        "longer duration (2.002 s > 2.0 s)"
    )


def test_explain_size():
    assert explain_choice(candidate(size=2048), candidate(size=1024)) == (
        "larger file (2048 > 1024 bytes)"
    )


def test_explain_hash():
    assert explain_choice(candidate(hash_byte=9), candidate(hash_byte=3)) == (
        "higher hash (tie-break)"
    )


@settings(max_examples=100)
@given(st.lists(
    st.tuples(st.sampled_from(["full", "suspect", "partial"]),
              st.sampled_from(["1.0", "2.0", "2.002"]),
              st.integers(0, 2), st.integers(0, 2)),
    min_size=2, max_size=5, unique=True,
))
def test_explain_choice_agrees_with_pick_best(specs):
    cands = [candidate(type_=t, duration=d, size=s, hash_byte=h) for t, d, s, h in specs]
    best = pick_best(cands)
    for other in cands:
        if other is best:
            continue
        text = explain_choice(best, other)
        a, b = best.name, other.name
        if a.type != b.type:
            assert text == f"{a.type} beats {b.type}"
        elif a.duration != b.duration:
            assert text.startswith("longer duration") and a.duration > b.duration
        elif best.size != other.size:
            assert text.startswith("larger file") and best.size > other.size
        else:
            assert text == "higher hash (tie-break)" and a.hash > b.hash


# ---- best_segments ----

def test_contiguous_segments_have_no_holes():
    segs = [candidate(2.0 * i) for i in range(5)]
    assert best_segments(segs, at(0), at(10)) == segs


def test_groups_by_start_and_picks_best_per_start():
    a_full = candidate(0, type_="full")
    a_partial = candidate(0, type_="partial", duration="1.0")
    b_suspect = candidate(2, type_="suspect")
    b_temp = candidate(2, type_="temp", size=10**6)
    b_full_short = candidate(2, type_="full", duration="1.999", hash_byte=7)
    c_small = candidate(4, size=10, hash_byte=3)
    c_large = candidate(4, size=11, hash_byte=2)
    cands = [c_small, b_temp, a_partial, b_suspect, c_large, a_full, b_full_short]
    out = best_segments(cands, at(0), at(6))
    assert out[0] == a_full
    assert out[1] == b_full_short
    # b_full_short ends at 3.999; c starts at 4.0: a 1 ms gap is within tolerance.
    assert out[2] == c_large
    assert len(out) == 3


def test_hole_marked_where_gap_exceeds_tolerance():
    first = candidate(0)
    second = candidate(2.011)  # 11 ms after the first ends
    out = best_segments([first, second], at(0), at(4.011))
    assert out == [first, Hole(at(2.0), at(2.011)), second]


def test_no_hole_where_gap_is_within_tolerance():
    assert HOLE_TOLERANCE == dt.timedelta(milliseconds=10)
    first = candidate(0)
    exactly = candidate(2.010)  # exactly 10 ms: not a hole
    assert best_segments([first, exactly], at(0), at(4.010)) == [first, exactly]
    almost = candidate(2.009)
    assert best_segments([first, almost], at(0), at(4.009)) == [first, almost]


def test_gap_of_10ms_plus_1us_is_a_hole():
    first = candidate(0)
    second = candidate(2.010001)
    out = best_segments([first, second], at(0), at(4.010001))
    assert out == [first, Hole(at(2.0), at(2.010001)), second]


def test_overlapping_segments_make_no_hole():
    long = candidate(0, duration="5.0")
    inside = candidate(2, duration="1.0")
    after = candidate(5)
    out = best_segments([long, inside, after], at(0), at(7))
    assert out == [long, inside, after]


def test_leading_and_trailing_holes():
    seg = candidate(10)
    assert best_segments([seg], at(0), at(20)) == [
        Hole(at(0), at(10)), seg, Hole(at(12), at(20)),
    ]


def test_small_leading_and_trailing_gaps_are_not_holes():
    seg = candidate(0.005)
    assert best_segments([seg], at(0), at(2.015)) == [seg]


def test_empty_range_is_one_hole():
    assert best_segments([], at(0), at(60)) == [Hole(at(0), at(60))]
    assert best_segments([candidate(0, type_="temp")], at(0), at(60)) == [Hole(at(0), at(60))]


def test_temp_segments_leave_holes():
    a = candidate(0)
    temp = candidate(2, type_="temp")
    c = candidate(4)
    assert best_segments([a, temp, c], at(0), at(6)) == [a, Hole(at(2), at(4)), c]


def test_segments_outside_range_are_excluded():
    before = candidate(0)  # [0, 2)
    ends_at_start = candidate(2)  # [2, 4): ends exactly at start
    straddles_start = candidate(5)  # [5, 7)
    inside = candidate(7)  # [7, 9)
    straddles_end = candidate(9)  # [9, 11)
    starts_at_end = candidate(10, duration="1.0")  # [10, 11): starts exactly at end
    after = candidate(20)
    cands = [after, starts_at_end, straddles_end, inside, straddles_start, ends_at_start, before]
    out = best_segments(cands, at(4), at(10))
    assert out == [Hole(at(4), at(5)), straddles_start, inside, straddles_end]


def test_segment_straddling_start_covers_it():
    seg = candidate(-0.5 + 60)  # starts before the range, ends inside it
    nxt = candidate(61.5)
    assert best_segments([seg, nxt], at(61), at(63.5)) == [seg, nxt]


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.integers(0, 60_000), st.sampled_from(["2.0", "1.5", "0.5", "3.0"]),
                  st.sampled_from(["full", "suspect", "partial", "temp"]), st.integers(0, 5)),
        max_size=15,
    ),
    st.integers(0, 30_000), st.integers(1, 40_000),
)
def test_best_segments_properties(specs, start_ms, length_ms):
    cands = [candidate(ms / 1000, duration=d, type_=t, hash_byte=h) for ms, d, t, h in specs]
    start, end = at(start_ms / 1000), at((start_ms + length_ms) / 1000)
    out = best_segments(cands, start, end)
    chosen = [x for x in out if isinstance(x, Candidate)]
    holes = [x for x in out if isinstance(x, Hole)]
    # One version per start time, in order, never temp, all overlapping the range.
    starts = [c.name.start for c in chosen]
    assert starts == sorted(set(starts))
    for c in chosen:
        assert c.name.type != "temp"
        assert c.name.end > start and c.name.start < end
        # the best of the versions at that start that reach into the range: a better
        # version that ends before the range starts covers none of it
        same_start = [o for o in cands if o.name.start == c.name.start
                      and o.name.end > start and o.name.start < end]
        assert c == pick_best(same_start)
    # Every usable overlapping start time is represented.
    expected = {
        c.name.start for c in cands
        if c.name.type != "temp" and c.name.end > start and c.name.start < end
    }
    assert set(starts) == expected
    # Holes are longer than the tolerance, lie in the range, and nothing chosen overlaps them.
    for h in holes:
        assert h.end - h.start > HOLE_TOLERANCE
        assert start <= h.start < h.end <= end
        for c in chosen:
            assert c.name.end <= h.start or c.name.start >= h.end
    # Items are in time order.
    def key(x):
        return x.start if isinstance(x, Hole) else x.name.start
    assert [key(x) for x in out] == sorted(key(x) for x in out)


def test_candidate_and_hole_are_values():
    a = candidate(0)
    assert a == candidate(0)
    assert hash(a) == hash(candidate(0))
    assert Hole(at(0), at(1)) == Hole(at(0), at(1))
    assert isinstance(a.name, SegmentName)
    with pytest.raises(AttributeError):
        a.size = 5  # type: ignore[misc]
