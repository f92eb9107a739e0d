"""Hour and pair digests (the Merkle levels) and hour-range arithmetic."""

from __future__ import annotations

import datetime as dt
import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.digests import (
    EMPTY_DIGEST,
    hour_digest,
    hour_in_range,
    hour_range,
    hours_between,
    pair_digest,
)
from protocol.errors import SegmentNameError
from protocol.hashing import encode_hash
from protocol.names import format_hour, parse_hour, parse_path

UTC = dt.timezone.utc


def listing(n: int, seed: int = 0) -> list[str]:
    """n distinct, valid segment and tombstone file names of one hour."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        digest = encode_hash(rng.randbytes(32))
        suffix = ".tombstone" if i % 5 == 0 else ".ts"
        name = f"{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}-2.0-full-{digest}{suffix}"
        parse_path("c/q/2019-11-13T02/" + name)  # really valid
        out.append(name)
    return out


# ---- hour_digest ----

def test_empty_hour_digest():
    assert hour_digest([]) == EMPTY_DIGEST == hashlib.sha256(b"").digest()


def test_hour_digest_is_32_bytes_and_deterministic():
    names = listing(10)
    assert len(hour_digest(names)) == 32
    assert hour_digest(names) == hour_digest(list(names))
    assert hour_digest(iter(names)) == hour_digest(names)


@settings(max_examples=100)
@given(st.lists(st.text(max_size=30), unique=True, max_size=30), st.randoms())
def test_hour_digest_is_independent_of_order(names, rnd):
    shuffled = list(names)
    rnd.shuffle(shuffled)
    assert hour_digest(shuffled) == hour_digest(names)
    assert hour_digest(reversed(names)) == hour_digest(names)


@settings(max_examples=100)
@given(st.lists(st.text(alphabet="abc:.-", max_size=12), unique=True, min_size=1, max_size=20),
       st.data())
def test_hour_digest_changes_when_a_name_is_added_or_removed(names, data):
    removed = data.draw(st.sampled_from(names))
    rest = [n for n in names if n != removed]
    assert hour_digest(rest) != hour_digest(names)
    added = data.draw(st.text(alphabet="abcd:.-", max_size=12).filter(lambda n: n not in names))
    assert hour_digest(names + [added]) != hour_digest(names)


def test_hour_digest_changes_for_real_listings():
    names = listing(50)
    base = hour_digest(names)
    assert hour_digest(names[1:]) != base
    assert hour_digest(names + listing(51)[50:]) != base
    # A tombstone beside its segment changes the digest.
    segment = next(n for n in names if n.endswith(".ts"))
    assert hour_digest(names + [segment[:-3] + ".tombstone"]) != base
    # Another version of a segment (different type) changes it too.
    assert hour_digest(names + [segment.replace("-full-", "-suspect-")]) != base


def test_hour_digest_separates_names():
    # Names are delimited, so moving characters between neighbours changes the digest.
    assert hour_digest(["ab", "c"]) != hour_digest(["a", "bc"])
    assert hour_digest(["abc"]) != hour_digest(["a", "bc"])


def test_hour_digest_handles_surrogate_escaped_names():
    assert hour_digest(["a\udcff"]) != hour_digest(["a"])


# ---- pair_digest ----

def hour_digests(n: int) -> list[tuple[str, bytes]]:
    start = dt.datetime(2019, 11, 13, tzinfo=UTC)
    return [
        (format_hour(start + dt.timedelta(hours=i)), hour_digest(listing(3, seed=i)))
        for i in range(n)
    ]


@settings(max_examples=50)
@given(st.integers(0, 30), st.randoms())
def test_pair_digest_is_independent_of_order(n, rnd):
    pairs = hour_digests(n)
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    assert pair_digest(shuffled) == pair_digest(pairs)


def test_pair_digest_changes_with_any_hour():
    pairs = hour_digests(5)
    base = pair_digest(pairs)
    assert len(base) == 32
    assert pair_digest(pairs[:-1]) != base
    assert pair_digest(pairs[1:]) != base
    changed = list(pairs)
    changed[2] = (changed[2][0], hour_digest(["other"]))
    assert pair_digest(changed) != base
    moved = list(pairs)
    moved[2] = ("2020-01-01T00", moved[2][1])
    assert pair_digest(moved) != base
    assert pair_digest([]) == EMPTY_DIGEST
    assert pair_digest(iter(pairs)) == base


# ---- hour_range ----

def test_hour_range_covers_current_hour_back():
    now = dt.datetime(2019, 11, 13, 2, 45, 51, 608000, tzinfo=UTC)
    assert hour_range(now, 3) == ("2019-11-12T23", "2019-11-13T02")
    assert hour_range(now, 0) == ("2019-11-13T02", "2019-11-13T02")
    assert hour_range(now, -5) == ("2019-11-13T02", "2019-11-13T02")
    assert hour_range(now, 24) == ("2019-11-12T02", "2019-11-13T02")


def test_hour_range_uses_utc():
    est = dt.timezone(dt.timedelta(hours=-5))
    now = dt.datetime(2019, 11, 12, 21, 59, 59, tzinfo=est)  # 02:59:59 UTC
    assert hour_range(now, 1) == ("2019-11-13T01", "2019-11-13T02")


def test_hour_range_crosses_years():
    now = dt.datetime(2020, 1, 1, 0, 0, tzinfo=UTC)
    assert hour_range(now, 1) == ("2019-12-31T23", "2020-01-01T00")


@settings(max_examples=100)
@given(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1),
                    timezones=st.just(UTC)),
       st.integers(0, 500))
def test_hour_range_matches_hours_between(now, backfill):
    first, last = hour_range(now, backfill)
    hours = hours_between(first, last)
    assert len(hours) == backfill + 1
    assert hours[0] == last == format_hour(now)
    assert hours[-1] == first


# ---- hours_between ----

def test_hours_between_newest_first_inclusive():
    assert hours_between("2019-11-12T22", "2019-11-13T01") == [
        "2019-11-13T01", "2019-11-13T00", "2019-11-12T23", "2019-11-12T22",
    ]


def test_hours_between_single_and_empty():
    assert hours_between("2019-11-13T02", "2019-11-13T02") == ["2019-11-13T02"]
    assert hours_between("2019-11-13T03", "2019-11-13T02") == []


def test_hours_between_leap_day():
    hours = hours_between("2020-02-28T23", "2020-03-01T00")
    assert len(hours) == 26
    assert "2020-02-29T12" in hours


def test_hours_between_at_the_edges_of_time():
    # Stepping below year 1 must not overflow; early years stay zero-padded.
    assert hours_between("0001-01-01T00", "0001-01-01T01") == ["0001-01-01T01", "0001-01-01T00"]
    assert hours_between("9999-12-31T22", "9999-12-31T23") == ["9999-12-31T23", "9999-12-31T22"]
    for hour in hours_between("0999-12-31T22", "1000-01-01T01"):
        parse_hour(hour)


def test_hours_between_rejects_bad_hours():
    with pytest.raises(SegmentNameError):
        hours_between("2019-11-13", "2019-11-13T02")
    with pytest.raises(SegmentNameError):
        hours_between("2019-11-13T00", "2019-11-13T24")


@settings(max_examples=100)
@given(st.datetimes(timezones=st.just(UTC)), st.integers(0, 200))
def test_hours_between_are_consecutive_valid_hours(start, n):
    first = start.replace(minute=0, second=0, microsecond=0)
    try:
        last = first + dt.timedelta(hours=n)
    except OverflowError:
        return
    hours = hours_between(format_hour(first), format_hour(last))
    assert len(hours) == n + 1
    assert hours == sorted(hours, reverse=True)
    assert len(set(hours)) == len(hours)
    for newer, older in zip(hours, hours[1:]):
        assert parse_hour(newer) - parse_hour(older) == dt.timedelta(hours=1)


# ---- hour_in_range ----

def test_hour_in_range_is_inclusive():
    first, last = "2019-11-12T23", "2019-11-13T02"
    assert hour_in_range(first, first, last)
    assert hour_in_range(last, first, last)
    assert hour_in_range("2019-11-13T00", first, last)
    assert not hour_in_range("2019-11-12T22", first, last)
    assert not hour_in_range("2019-11-13T03", first, last)
    assert not hour_in_range("2019-11-13T00", last, first)


@settings(max_examples=100)
@given(st.integers(-50, 50), st.integers(0, 30))
def test_hour_in_range_agrees_with_hours_between(offset, width):
    base = dt.datetime(2019, 11, 13, tzinfo=UTC)
    first = format_hour(base)
    last = format_hour(base + dt.timedelta(hours=width))
    hour = format_hour(base + dt.timedelta(hours=offset))
    assert hour_in_range(hour, first, last) == (hour in hours_between(first, last))
