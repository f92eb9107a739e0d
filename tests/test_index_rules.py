"""Pure rules of the persistent index: racy listings, hot hours, the file format."""

from __future__ import annotations

import datetime as dt

import pytest

from protocol.coverage import HourSpans, hour_spans
from protocol.index.hot_hours import HotHours, pinned_hours
from protocol.index.schema import (
    APPLICATION_ID, SCHEMA_VERSION, HourCounts, IndexFormatError, count_names,
    decode_names, decode_spans, encode_names, encode_spans, index_usable,
)
from protocol.index.listing_stamp import (
    RACY_MARGIN_NS, DirStamp, ListingStamp, listing_trusted, plan_sweep,
)

S = 1_000_000_000
UTC = dt.timezone.utc


def stamp(m, c=None):
    return DirStamp(m, m if c is None else c)


# ---- racy-clean listings ----

def test_listing_trusted_only_with_equal_stamps_safely_in_the_past():
    old = ListingStamp(stamp(100 * S), listed_at_ns=200 * S)
    assert listing_trusted(old, stamp(100 * S))
    assert not listing_trusted(old, stamp(101 * S))          # an entry changed
    assert not listing_trusted(old, stamp(100 * S, 150 * S))  # mtime restored, ctime not
    assert not listing_trusted(old, None)                      # directory gone
    assert not listing_trusted(None, stamp(100 * S))           # never listed


def test_a_listing_in_the_same_tick_as_its_stamp_is_racy():
    """git's racily clean entries: the stamp equals the listing time's tick, so a
    change right after the listing could leave it unchanged."""
    same_tick = ListingStamp(stamp(100 * S), listed_at_ns=100 * S)
    assert same_tick.racy()
    assert not listing_trusted(same_tick, stamp(100 * S))
    just_inside = ListingStamp(stamp(100 * S), listed_at_ns=100 * S + RACY_MARGIN_NS)
    assert not listing_trusted(just_inside, stamp(100 * S))
    just_outside = ListingStamp(stamp(100 * S), listed_at_ns=100 * S + RACY_MARGIN_NS + 1)
    assert listing_trusted(just_outside, stamp(100 * S))
    # a ctime in the tick counts as much as an mtime (a restored mtime, fresh ctime)
    ctime_racy = ListingStamp(stamp(10 * S, 100 * S), listed_at_ns=101 * S)
    assert not listing_trusted(ctime_racy, stamp(10 * S, 100 * S))
    # a clock behind the stamps (skew) is racy too, never trusted
    assert not listing_trusted(ListingStamp(stamp(100 * S), 50 * S), stamp(100 * S))


def test_plan_sweep_sorts_hours_into_trusted_relist_and_gone():
    stored = {
        "a": ListingStamp(stamp(1 * S), 10 * S),    # unchanged
        "b": ListingStamp(stamp(1 * S), 10 * S),    # changed
        "c": ListingStamp(stamp(9 * S), 10 * S),    # racy
        "d": ListingStamp(stamp(1 * S), 10 * S),    # gone
        "e": None,                                   # never verified
    }
    current = {"a": stamp(1 * S), "b": stamp(2 * S), "c": stamp(9 * S),
               "e": stamp(1 * S), "f": stamp(1 * S)}  # f: new
    plan = plan_sweep(stored, current)
    assert plan.trusted == ["a"]
    assert plan.relist == ["b", "c", "e", "f"]
    assert plan.gone == ["d"]


# ---- hot hours ----

NOW = dt.datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def key(hour, q="source"):
    return ("ch", q, hour)


def test_pinned_hours_are_the_current_and_the_previous():
    assert pinned_hours(NOW) == {"2026-03-01T12", "2026-03-01T11"}
    assert pinned_hours(dt.datetime(2026, 3, 1, 0, 0, tzinfo=UTC)) == {
        "2026-03-01T00", "2026-02-28T23"}


def test_lru_evicts_least_recent_beyond_the_bound_never_pinned_or_unsaved():
    hot = HotHours(max_hours=2)
    for h in ("2026-03-01T12", "2026-01-01T00", "2026-01-01T01", "2026-03-01T11",
              "2026-01-01T02", "2026-01-01T03"):
        hot.touch(key(h))
    hot.touch(key("2026-01-01T00"))  # read again: most recent now
    unsaved = {key("2026-01-01T01")}
    out = hot.evictions(NOW, unsaved=lambda k: k in unsaved)
    # loose: 01 (unsaved, kept), 02, 03, 00 -> two must go: 02 then 03
    assert out == [key("2026-01-01T02"), key("2026-01-01T03")]
    assert key("2026-03-01T12") in hot and key("2026-03-01T11") in hot
    assert key("2026-01-01T01") in hot and key("2026-01-01T00") in hot
    assert hot.evictions(NOW, unsaved=lambda k: k in unsaved) == []
    # one more hour read: now the least recent goes, saved meanwhile
    hot.touch(key("2026-01-01T04"))
    assert hot.evictions(NOW, unsaved=lambda k: k in unsaved) == [key("2026-01-01T00")]
    hot.touch(key("2026-01-01T05"))
    assert hot.evictions(NOW) == [key("2026-01-01T01")]
    assert len(hot) == 4


def test_time_moving_on_unpins_hours():
    hot = HotHours(max_hours=0)
    hot.touch(key("2026-03-01T12"))
    assert hot.evictions(NOW) == []
    assert hot.evictions(NOW + dt.timedelta(hours=2)) == [key("2026-03-01T12")]
    with pytest.raises(ValueError):
        HotHours(-1)


# ---- file format ----

def test_schema_version_rule():
    assert index_usable(APPLICATION_ID, SCHEMA_VERSION) is None
    assert "new" in index_usable(0, 0)
    assert "not a segsync index" in index_usable(0x1234, SCHEMA_VERSION)
    assert "schema version 99" in index_usable(APPLICATION_ID, 99)
    assert "schema version 0" in index_usable(APPLICATION_ID, 0)


def test_names_round_trip_and_bad_blobs_are_errors():
    names = ["b.ts", "a.tombstone", "a.ts", "caf\udce9.ts"]
    assert decode_names(encode_names(names)) == sorted(names)
    assert decode_names(encode_names([])) == []
    with pytest.raises(IndexFormatError):
        decode_names(b"a.ts\n\nb.ts")  # an empty name: not a blob of ours
    with pytest.raises(IndexFormatError):
        decode_names(b"x" * (65 * 1024 * 1024))  # bigger than any hour
    with pytest.raises(IndexFormatError):
        decode_names("a.ts")


def test_counts_by_kind():
    names = ["00:00.000000-2.0-full-A.ts", "00:02.000000-2.0-full-B.ts",
             "00:02.000000-2.0-full-B.tombstone", "00:04.000000-2.0-full-C.tombstone"]
    assert count_names(names) == HourCounts(segments=1, hidden=1, tombstones=2)
    assert count_names(names).files == 4
    assert count_names([]) == HourCounts()


def test_spans_round_trip():
    h = "00:00.000000-2.0-full-{}.ts"
    from helpers import make_name
    names = [make_name(bytes([i]), dt.datetime(2026, 1, 1, 0, 0, 2 * i, tzinfo=UTC)).filename
             for i in range(5)]
    spans = hour_spans(names)
    assert spans.full and decode_spans(encode_spans(spans)) == spans
    assert decode_spans(encode_spans(HourSpans())) == HourSpans()
    with pytest.raises(IndexFormatError):
        decode_spans(b"[1,2")
    del h
