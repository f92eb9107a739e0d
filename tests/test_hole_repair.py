"""Hole repair, the pure part (issue 25): which deferred offers became holes, when,
and whom to ask for them."""

from __future__ import annotations

import datetime as dt

import pytest

from protocol.recording import (
    BURST_GRACE,
    MAX_LATENESS,
    MAX_SENDERS,
    MIN_LATENESS_MARGIN,
    REORDER_MEMORY,
    STALL_MARGIN,
    HoleWatch,
    RecordingState,
    repair_order,
)
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


# ---- holes by the clock: nothing later passes them (issue 25) ----
# `now` 0 is the wall clock's T0 + 100 s; a segment `seg(s)` ends at T0 + s + 2.


def wall(now: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=100 + now)


def written(s: RecordingState, second: float, now: float) -> None:
    s.segment_written(seg(second), now, wall(now))


def live(lateness: float = 1.0) -> RecordingState:
    """A downloader that wrote segments 92..98 each `lateness` s after its end (the
    last at `now` lateness): a margin of MIN_LATENESS_MARGIN."""
    s = recording()
    for second in (92, 94, 96, 98):
        written(s, second, second + 2 + lateness - 100)
    return s


def decision(s: RecordingState, second: float, now: float):
    d = s.decide(seg(second), now, wall(now))
    return d.status, d.reason


def test_the_last_segment_of_a_stream_is_a_hole_once_overdue():
    s = live(lateness=1.0)
    due = 2 + 1.0 + MIN_LATENESS_MARGIN  # 100 ends at T0 + 102, written 1 s late at most
    assert s.hole_at(seg(100), 0.0, wall(0.0)) == due
    assert decision(s, 100, 0.0) == ("later", "ahead")
    assert decision(s, 100, due - 0.01) == ("later", "ahead")
    # nothing was written since 98: no later segment passes 100, the clock does
    assert decision(s, 100, due) == ("want", "hole")
    # without a wall clock the rule cannot time it: ahead until passed
    assert s.hole_at(seg(100), due, None) is None


def test_consecutive_misses_are_each_a_hole_on_time():
    s = live(lateness=0.0)
    # 100, 102 and 104 missed in a row; the downloader writes 106 on time
    for second, now in ((100, 3.0), (102, 5.0), (104, 7.0)):
        assert decision(s, second, now - 0.01) == ("later", "ahead")
        assert decision(s, second, now) == ("want", "hole")
    written(s, 106, 8.0)
    assert decision(s, 104, 8.0) == ("want", "hole")
    watch = HoleWatch()
    for second in (108, 110):
        watch.deferred(seg(second), "node-a")
    planned = watch.plan(s, "desertbus", "source", 8.0, wall(8.0), 120.0)
    assert sorted((at, w.name.path) for w, at in planned) == [(11.0, seg(108).path),
                                                              (13.0, seg(110).path)]


def test_a_late_downloader_with_a_download_in_progress_is_waited_for():
    s = live(lateness=1.0)
    s.temp_appeared(seg(100), now=2.5)  # its download began, slower than usual
    assert s.hole_at(seg(100), 10.0, wall(10.0)) is None
    assert decision(s, 100, 10.0) == ("later", "in_progress")
    s.temp_gone(seg(100))  # the download failed: overdue, a hole
    assert decision(s, 100, 10.0) == ("want", "hole")


def test_a_downloader_that_writes_later_is_waited_for_longer():
    s = live(lateness=0.2)
    assert s.hole_at(seg(100), 0.0, wall(0.0)) == 2 + 0.2 + MIN_LATENESS_MARGIN
    written(s, 100, 3.9)  # 1.9 s after its end: later than before, within a segment
    # 102 (ends at `now` 4) is due 1.9 s after its end, plus a margin of how much the
    # lateness varied (1.7 s), not 0.2 s + MIN_LATENESS_MARGIN
    assert decision(s, 102, 4 + 0.2 + MIN_LATENESS_MARGIN) == ("later", "ahead")
    assert decision(s, 102, 4 + 1.9 + 1.6) == ("later", "ahead")
    assert s.hole_at(seg(102), 3.9, wall(3.9)) == pytest.approx(4 + 1.9 + 1.7)
    # the late write is forgotten after REORDER_MEMORY; the timely ones before it too
    later = 3.9 + REORDER_MEMORY + 1
    assert s.hole_at(seg(102), later, wall(later)) is None


def test_a_downloader_later_than_a_segment_is_given_time_to_stall():
    # one that writes a segment more than a segment's length after its end polls less
    # often than segments come: it stalls now and then, before it ever shows two
    # downloads at once (its first stall cost 2 segments of 30 in
    # bench/cluster_bandwidth.py --behind)
    s = live(lateness=0.2)
    written(s, 100, 4.5)  # 2.5 s after its end, one download at a time
    assert s.hole_at(seg(102), 4.5, wall(4.5)) == pytest.approx(4 + 2.5 + STALL_MARGIN)
    assert decision(s, 102, 4 + 2.5 + 2.3 + 0.1) == ("later", "ahead")
    assert decision(s, 102, 4 + 2.5 + STALL_MARGIN) == ("want", "hole")
    # and a segment it passed may still be on its way: started at the same poll as the
    # later one that landed first, before its own response headers (no temp file yet)
    written(s, 104, 9.0)
    assert decision(s, 102, 9.0) == ("later", "passing")
    assert s.hole_at(seg(102), 9.0, wall(9.0)) == pytest.approx(9.0 + BURST_GRACE)
    # exactly a segment late is not behind: the margin is how much it varied, and a
    # passed segment is a hole at once
    s = live(lateness=0.2)
    written(s, 100, 4.0)
    assert s.hole_at(seg(102), 4.0, wall(4.0)) == pytest.approx(4 + 2.0 + 1.8)
    written(s, 104, 8.0)
    assert decision(s, 102, 8.0) == ("want", "hole")


def test_a_downloader_that_fetches_several_at_once_is_given_time_to_stall():
    s = live(lateness=1.0)
    assert s.hole_at(seg(100), 0.0, wall(0.0)) == 2 + 1.0 + MIN_LATENESS_MARGIN
    # two downloads in progress together: it fell behind (and may stall next)
    s.temp_appeared(seg(100), now=1.5)
    s.temp_appeared(seg(102), now=1.6)
    written(s, 100, 3.0)  # 1 s late
    written(s, 102, 5.0)
    assert s.hole_at(seg(104), 5.0, wall(5.0)) == 6 + 1.0 + STALL_MARGIN
    assert decision(s, 104, 6 + 1.0 + MIN_LATENESS_MARGIN) == ("later", "ahead")
    assert decision(s, 104, 6 + 1.0 + STALL_MARGIN) == ("want", "hole")


def test_a_downloader_far_behind_its_stream_is_not_timed():
    s = recording()
    written(s, 50, 0.0)  # written 48 s after its end: over MAX_LATENESS
    assert 48 > MAX_LATENESS
    assert s.hole_at(seg(52), 0.0, wall(0.0)) is None
    assert decision(s, 52, 5.0) == ("later", "ahead")
    written(s, 54, 2.0)  # it passes 52: a hole by the frontier as before, once the
    # downloader behind its stream (which fetches several at once) had BURST_GRACE
    assert decision(s, 52, 2.0) == ("later", "passing")
    assert decision(s, 52, 2.0 + BURST_GRACE) == ("want", "hole")


def test_a_downloader_that_stops_leaves_each_segment_a_hole_when_overdue():
    s = live(lateness=1.0)  # and then writes nothing more
    for second in (100, 102, 104):
        due = second - 100 + 2 + 1.0 + MIN_LATENESS_MARGIN
        assert decision(s, second, due - 0.01) == ("later", "ahead")
        assert decision(s, second, due) == ("want", "hole")
    # once idle the pair is not recorded at all: wanted, not timed
    assert decision(s, 120, 11.5) == ("want", "idle")  # last write at `now` 1
    assert s.hole_at(seg(120), 11.5, wall(11.5)) is None
