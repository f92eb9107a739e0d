"""Hole repair, the pure part (issue 25): which deferred offers became holes, when,
and whom to ask for them."""

from __future__ import annotations

import datetime as dt

from protocol.recording import MAX_SENDERS, HoleWatch, RecordingState, repair_order
from tests.helpers import make_name

UTC = dt.timezone.utc
T0 = dt.datetime(2019, 11, 13, 2, 30, 0, tzinfo=UTC)
WALL = T0 + dt.timedelta(seconds=30)


def seg(second: float, quality: str = "source"):
    return make_name(f"s{second}{quality}".encode(), T0 + dt.timedelta(seconds=second),
                     quality=quality)


def recording() -> RecordingState:
    return RecordingState(idle_after=10.0, temp_ttl=60.0, recent_window=120.0)


def test_a_deferred_offer_becomes_due_once_the_downloader_passes_it():
    s, watch = recording(), HoleWatch()
    s.segment_written(seg(10), now=0.0)
    watch.deferred(seg(12), "node-a")
    assert watch.plan(s, "desertbus", "source", 0.5, WALL, 120.0) == []  # still ahead
    s.segment_written(seg(14), now=2.0)
    planned = watch.plan(s, "desertbus", "source", 2.0, WALL, 120.0)
    assert [(w.name, at) for w, at in planned] == [(seg(12), 2.0)]
    assert planned[0][0].senders == ["node-a"]
    # planned once: the next write of the pair does not plan it again
    s.segment_written(seg(16), now=4.0)
    assert watch.plan(s, "desertbus", "source", 4.0, WALL, 120.0) == []


def test_a_downloader_writing_out_of_order_is_given_its_lag():
    s, watch = recording(), HoleWatch()
    s.segment_written(seg(10), now=0.0)
    s.segment_written(seg(14), now=10.0)
    s.segment_written(seg(12), now=11.0)  # late by 1 s
    watch.deferred(seg(16), "node-a")
    s.segment_written(seg(18), now=20.0)
    [(item, at)] = watch.plan(s, "desertbus", "source", 20.0, WALL, 120.0)
    assert at == 21.5


def test_settled_and_old_offers_are_forgotten_and_the_watch_is_bounded():
    s, watch = recording(), HoleWatch(max_items=3)
    s.segment_written(seg(20), now=0.0)
    for second in (10, 12, 14, 16):
        watch.deferred(seg(second), None)
    assert len(watch) == 3 and seg(10).path not in watch
    watch.forget(seg(12).path)
    assert sorted(watch.paths_of("desertbus", "source")) == sorted([seg(14).path,
                                                                     seg(16).path])
    late = T0 + dt.timedelta(seconds=15 + 120)  # 14 is older than the recent window
    planned = watch.plan(s, "desertbus", "source", 0.0, late, 120.0)
    assert [w.name for w, _ in planned] == [seg(16)]
    assert seg(14).path not in watch
    watch.forget(seg(16).path)
    watch.forget("not/watched")
    assert len(watch) == 0 and watch.paths_of("desertbus", "source") == []


def test_pairs_are_apart_and_senders_bounded():
    s, watch = recording(), HoleWatch()
    s.segment_written(seg(14), now=0.0)
    watch.deferred(seg(12, "720p"), "node-a")
    assert watch.plan(s, "desertbus", "source", 0.0, WALL, 120.0) == []
    for i in range(MAX_SENDERS + 3):
        watch.deferred(seg(12), f"n{i}")
    watch.deferred(seg(12), "n5")
    senders = watch.get(seg(12).path).senders
    assert len(senders) == MAX_SENDERS and senders[-1] == "n5"


def test_repair_asks_the_offering_nodes_first_then_every_peer():
    assert repair_order(["a", "b", "gone"], ["c", "b", "a"]) == ["b", "a", "c"]
    assert repair_order([], ["c", "b"]) == ["c", "b"]
