"""Pure decisions of downloader-aware push: recording state, frontier, near-duplicates,
the deferred-offer queue, and the "later" offer reply on the wire."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from protocol import messages as m
from protocol.errors import ProtocolError
from protocol.names import parse_path
from protocol.recording import (
    MAX_PAIRS,
    MAX_TEMPS_PER_PAIR,
    DeferredQueue,
    NearDuplicates,
    RecordingState,
    left_to_backfill,
    near_duplicate,
    retry_after_for,
)
from protocol.replication import plan_hour
from tests.helpers import make_name

UTC = dt.timezone.utc
T0 = dt.datetime(2019, 11, 13, 2, 30, 0, tzinfo=UTC)
UUID = "3f2b8c1e-6a4d-4e8b-9c1a-0f1e2d3c4b5a"


def seg(second: float, data: bytes | None = None, **kw):
    start = T0 + dt.timedelta(seconds=second)
    return make_name(data if data is not None else f"s{second}".encode(), start, **kw)


def temp(second: float):
    start = T0 + dt.timedelta(seconds=second)
    return parse_path(f"desertbus/source/2019-11-13T02/{start:%M:%S.%f}-2.0-temp-{UUID}.ts")[0]


WALL = T0 + dt.timedelta(seconds=30)  # the wall clock: segments at T0+10.. are recent


class State(RecordingState):
    def decide(self, name, now, wall_now=WALL):
        return super().decide(name, now, wall_now)


def state(idle=10.0, ttl=60.0, window=120.0) -> RecordingState:
    return State(idle_after=idle, temp_ttl=ttl, recent_window=window)


def test_a_pair_nothing_recorded_wants_everything():
    s = state()
    d = s.decide(seg(100), now=0.0)
    assert (d.status, d.reason) == ("want", "idle")


def test_ahead_of_the_frontier_is_later_a_passed_hole_is_wanted():
    s = state()
    s.segment_written(seg(10), now=0.0)
    ahead = s.decide(seg(12), now=0.5)
    assert (ahead.status, ahead.reason) == ("later", "ahead")
    assert ahead.retry_after == retry_after_for(seg(12)) == 1.0
    s.segment_written(seg(14), now=3.0)  # the downloader went past 12 without it
    hole = s.decide(seg(12), now=3.1)
    assert (hole.status, hole.reason) == ("want", "hole")
    # the frontier itself, a few hundred microseconds off, is not "ahead"
    assert s.decide(seg(14.0005), now=3.1).status == "want"


def test_a_download_in_progress_defers_even_behind_the_frontier():
    s = state()
    s.segment_written(seg(14), now=0.0)
    s.temp_appeared(temp(12), now=0.1)
    d = s.decide(seg(12), now=0.2)
    assert (d.status, d.reason) == ("later", "in_progress")
    s.temp_gone(temp(12))
    assert s.decide(seg(12), now=0.3).status == "want"


def test_a_stale_temp_file_stops_deferring():
    s = state(idle=10, ttl=5)
    s.segment_written(seg(14), now=0.0)
    s.temp_appeared(temp(12), now=0.0)
    s.segment_written(seg(16), now=6.0)  # still recording, the temp is 6 s old
    assert s.decide(seg(12), now=6.0).reason == "hole"


def test_a_downloader_that_stopped_is_not_waited_for():
    s = state(idle=10)
    s.segment_written(seg(10), now=0.0)
    assert s.decide(seg(12), now=9.0).status == "later"
    assert s.recording("desertbus", "source", 9.0)
    d = s.decide(seg(12), now=10.5)
    assert (d.status, d.reason) == ("want", "idle")
    assert not s.recording("desertbus", "source", 10.5)


def test_a_segment_older_than_the_recent_window_is_wanted_at_once():
    s = state(window=120)
    s.segment_written(seg(10), now=0.0)
    later = T0 + dt.timedelta(seconds=12 + 121)
    assert s.decide(seg(12), now=0.1, wall_now=later).reason == "old"
    no_window = state(window=0)
    no_window.segment_written(seg(10), now=0.0)
    assert no_window.decide(seg(12), now=0.1).reason == "old"


def test_recording_is_per_pair():
    s = state()
    s.segment_written(seg(10), now=0.0)
    assert s.decide(seg(12, quality="480p"), now=0.1).status == "want"
    assert s.decide(seg(12, channel="other"), now=0.1).status == "want"


def test_temp_alone_marks_the_pair_recorded():
    s = state()
    s.temp_appeared(temp(12), now=0.0)
    assert s.decide(seg(12), now=0.1).reason == "in_progress"
    assert s.decide(seg(20), now=0.1).reason == "ahead"  # no frontier yet: all ahead


def test_state_is_bounded():
    s = state()
    for i in range(MAX_TEMPS_PER_PAIR + 10):
        s.temp_appeared(temp(i), now=0.0)
    assert len(s.get("desertbus", "source").temps) == MAX_TEMPS_PER_PAIR
    for i in range(MAX_PAIRS + 5):
        s.segment_written(seg(1, channel=f"c{i}"), now=float(i))
    assert s.get("c0", "source") is None
    assert s.get(f"c{MAX_PAIRS + 4}", "source") is not None


def test_retry_after_is_half_a_segment_within_bounds():
    assert retry_after_for(seg(0, duration="2.0")) == 1.0
    assert retry_after_for(seg(0, duration="0.1")) == 0.25
    assert retry_after_for(seg(0, duration="60")) == 5.0


def test_left_to_backfill_once_older_than_the_recent_window():
    name = seg(0)
    assert not left_to_backfill(name, T0 + dt.timedelta(seconds=119), 120)
    assert left_to_backfill(name, T0 + dt.timedelta(seconds=121), 120)


# ---- near-duplicates ----

def test_near_duplicate_same_bytes_within_a_millisecond():
    a = seg(10, b"x")
    assert near_duplicate(seg(10.0009, b"x"), [a])
    assert near_duplicate(seg(9.999, b"x"), [a])
    assert not near_duplicate(seg(10.0011, b"x"), [a])
    assert not near_duplicate(seg(10.0005, b"y"), [a])  # other bytes
    assert not near_duplicate(seg(10.0005, b"x", duration="2.002"), [a])
    assert not near_duplicate(seg(10.0005, b"x", type_="suspect"), [a])


def test_near_duplicates_of_a_listing():
    local = [seg(10, b"x").filename, seg(12, b"z").filename, "junk.ts",
             "00:00.000000-2.0-full-bad.ts"]
    near = NearDuplicates("desertbus", "source", "2019-11-13T02", local)
    assert seg(10.0004, b"x") in near
    assert seg(12.0004, b"x") not in near
    assert seg(10.0004, b"x", quality="480p") not in near


def test_backfill_does_not_fetch_a_near_duplicate():
    mine = seg(10, b"x")
    theirs = seg(10.0003, b"x")
    other = seg(14, b"w")
    plan = plan_hour("desertbus", "source", "2019-11-13T02", [theirs.filename, other.filename],
                     {mine.filename}, T0 + dt.timedelta(hours=1), 0)
    assert [n.filename for n in plan.fetch] == [other.filename]
    assert plan.skipped_near_duplicate == 1


# ---- the deferred-offer queue ----

def test_deferred_queue_releases_in_due_order_and_is_bounded():
    q: DeferredQueue[str] = DeferredQueue(max_items=3)
    assert q.park("b", 2.0) and q.park("a", 1.0) and q.park("c", 2.0)
    assert not q.park("d", 0.5)  # full: the caller leaves it to backfill
    assert q.next_due() == 1.0
    assert q.pop_due(0.9) == []
    assert q.pop_due(2.0) == ["a", "b", "c"]
    assert len(q) == 0 and q.next_due() is None


# ---- the reply on the wire ----

def test_later_is_a_message_of_its_own_and_offer_reply_is_unchanged():
    later = m.decode(m.encode(m.OfferLater(1.5)), (m.OfferReply, m.OfferLater))
    assert later == m.OfferLater(1.5)
    assert m.unpack_bounded(m.encode(m.OfferReply("want")), 1024) == {
        "v": 1, "type": "offer_reply", "status": "want"}  # what an older peer decodes
    with pytest.raises(ProtocolError):  # what an older pusher would do with it
        m.decode(m.encode(m.OfferLater(1.5)), m.OfferReply)


@pytest.mark.parametrize("obj", [
    {"type": "offer_later"},
    {"type": "offer_later", "retry_after": 0},
    {"type": "offer_later", "retry_after": -1},
    {"type": "offer_later", "retry_after": 1e9},
    {"type": "offer_later", "retry_after": True},
    {"type": "offer_later", "retry_after": "1"},
    {"type": "offer_reply", "status": "later"},
    {"type": "offer_reply", "status": "want", "retry_after": 1.0},
])
def test_bad_later_replies_are_refused(obj):
    import msgpack
    with pytest.raises(ProtocolError):
        m.decode(msgpack.packb({"v": 1, **obj}), (m.OfferReply, m.OfferLater))


def test_status_shows_the_deferral_counters():
    from agent.commands.status_view import render_status

    base = m.StatusReply(node="a", url="http://a", started_at=0.0, time=10.0, segments=3,
                         peers=[])
    text = render_status(dataclasses.replace(
        base, defer_push=True, deferred_offers=12, deferral_saved=10, holes_filled_by_push=2))
    assert "downloader-aware push on: 12 offers deferred, 10 saved by our downloader, " \
           "2 holes filled by push" in text
    assert "downloader-aware push" not in render_status(base)  # an older node


def test_pairs_lists_the_followed_and_the_declared():
    s = State(idle_after=10.0, temp_ttl=60.0, recent_window=120.0,
              declared=[("desertbus", "source"), ("desertbus", "480p")], declared_grace=30.0,
              started=100.0)
    s.segment_written(seg(10), now=101.0)  # desertbus/source
    s.segment_written(make_name(b"x", seg(10).start, quality="720p"), now=102.0)
    assert s.pairs(now=105.0) == [("desertbus", "480p", True, True, None),
                                  ("desertbus", "720p", False, True, 102.0),
                                  ("desertbus", "source", True, True, 101.0)]
    assert s.pairs(now=131.5) == [("desertbus", "480p", True, False, None),  # grace over
                                  ("desertbus", "720p", False, False, 102.0),  # idle
                                  ("desertbus", "source", True, False, 101.0)]


def test_status_names_the_recorded_pairs():
    from agent.commands.status_view import SHOWN_PAIRS, render_status

    base = m.StatusReply(node="a", url="http://a", started_at=0.0, time=100.0, segments=3,
                         peers=[], defer_push=True, deferred_offers=0, deferral_saved=0,
                         holes_filled_by_push=0)
    pairs = [m.RecordedPairStatus("desertbus", "source", True, True, 98.0),
             m.RecordedPairStatus("desertbus", "720p", False, True, 99.0),
             m.RecordedPairStatus("desertbus", "480p", True, False, None)]
    text = render_status(dataclasses.replace(base, recorded_pairs=pairs))
    flat = " ".join(line.strip() for line in text.splitlines())
    assert "recorded here: desertbus/source (declared, last local file 2s ago), " \
           "desertbus/720p (last local file 1s ago), desertbus/480p (declared, no local " \
           "file yet: not waited for)" in flat
    many = [m.RecordedPairStatus("c", f"q{i}", False, True, 99.0) for i in range(12)]
    text = render_status(dataclasses.replace(base, recorded_pairs=many))
    assert f"and {12 - SHOWN_PAIRS} more" in text and "c/q8" not in text
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "recorded here" not in render_status(base)  # none, or an older node


def test_defer_push_config_key(tmp_path):
    from agent.config import ConfigError, build_config, load_toml

    toml = tmp_path / "segsync.toml"
    toml.write_text("defer-push = false\nrecording-idle = 4\n")
    cfg = build_config({"root": tmp_path, **load_toml(toml)})
    assert (cfg.defer_push, cfg.recording_idle) == (False, 4.0)
    assert build_config({"root": tmp_path}).defer_push is True
    for bad in ({"defer_push": "no"}, {"recording_idle": 0}):
        with pytest.raises(ConfigError):
            build_config({"root": tmp_path, **bad})


async def test_reoffers_hand_items_back_when_due_and_refuse_old_ones(autojump_clock):
    import trio

    from agent.push.reoffer import ReOffers

    requeued: list[tuple[float, str]] = []
    wall = [T0 + dt.timedelta(seconds=30)]
    names = {"a": seg(10), "b": seg(12), "old": seg(-200)}
    reoffers: ReOffers[str] = ReOffers(
        lambda item: requeued.append((trio.current_time(), item)), names.__getitem__,
        recent_window=120, max_items=2, wall_clock=lambda: wall[0])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reoffers.run)
        start = trio.current_time()
        assert reoffers.park("a", 2.0)
        assert reoffers.park("b", 0.5)  # due earlier than the item already waiting
        assert not reoffers.park("old", 1.0)  # older than the recent window: backfill's
        assert not reoffers.park("a", 1.0)  # full
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert [(round(t - start, 3), item) for t, item in requeued] == [(0.5, "b"), (2.0, "a")]
    assert len(reoffers) == 0


def test_backfill_skips_a_peers_downloader_temp_files_as_temp_not_invalid():
    listed = [f"00:10.000000-2.0-temp-{UUID}.ts", f"00:12.000000-2.0-temp-{UUID.upper()}.ts",
              seg(14, b"w").filename]
    plan = plan_hour("desertbus", "source", "2019-11-13T02", listed, set(),
                     T0 + dt.timedelta(hours=1), 0)
    assert (plan.skipped_temp, plan.invalid, len(plan.fetch)) == (2, 0, 1)


# ---- a downloader that falls behind writes out of order (issue 25) ----

def test_a_downloader_writing_in_order_leaves_a_hole_at_once():
    s = state()
    s.segment_written(seg(10), now=0.0)
    s.segment_written(seg(14), now=2.0)
    assert s.hole_at(seg(12), now=2.0) == 2.0  # passed at 2.0, no reorder lag
    assert s.decide(seg(12), now=2.0).reason == "hole"
    assert s.hole_at(seg(16), now=2.0) is None  # ahead
    s.temp_appeared(temp(12), now=2.1)
    assert s.hole_at(seg(12), now=2.2) is None  # being downloaded after all


def test_late_writes_teach_how_long_a_passed_segment_may_still_come():
    """wubloader's downloader, behind, fetches several segments at once and creates a
    temp file only when headers arrive: 14 lands while 12 is still in flight with no
    temp file. Once it has done so, a passed segment waits out that lag (with a margin)
    before it counts as a hole."""
    s = state()
    s.segment_written(seg(10), now=0.0)
    s.segment_written(seg(14), now=10.0)
    s.segment_written(seg(12), now=11.0)  # 1 s after 14 passed it
    assert s.get("desertbus", "source").frontier == seg(14).start
    s.segment_written(seg(20), now=20.0)  # passes 16 and 18
    d = s.decide(seg(16), now=20.5)
    assert (d.status, d.reason) == ("later", "passing")
    assert d.retry_after == pytest.approx(1.0)  # 20 + 1.5 * 1 s - 20.5
    assert s.hole_at(seg(18), now=20.5) == pytest.approx(21.5)
    assert s.decide(seg(16), now=21.5).reason == "hole"


def test_the_reorder_lag_is_capped_and_forgotten():
    from protocol.recording import MAX_HOLE_GRACE, REORDER_MEMORY, behind_stream, hole_grace
    s = state(idle=1e9)
    s.segment_written(seg(10), now=0.0)
    s.segment_written(seg(14), now=1.0)
    s.segment_written(seg(12), now=100.0)  # a retry, 99 s later
    pair = s.get("desertbus", "source")
    assert hole_grace(pair, 100.0, behind_stream(pair, 100.0, 2.0)) == MAX_HOLE_GRACE
    later = 100.0 + REORDER_MEMORY + 1
    assert hole_grace(pair, later, behind_stream(pair, later, 2.0)) == 0.0


def test_a_passed_start_before_the_remembered_advances_waits_from_the_oldest():
    from protocol.recording import MAX_PASSES, passed_at
    s = state(idle=1e9)
    for i in range(MAX_PASSES + 10):
        s.segment_written(seg(10 + 2 * i), now=float(i))
    pair = s.get("desertbus", "source")
    assert len(pair.passes) == MAX_PASSES
    assert passed_at(pair, seg(11).start) == 10.0  # the oldest remembered advance
    assert passed_at(pair, seg(10 + 2 * 100).start) == 100.0
    assert passed_at(pair, seg(10 + 2 * (MAX_PASSES + 10)).start) is None


def test_a_late_temp_file_teaches_the_lag_too():
    """A peer's copy may win the race; the downloader's own file then has the peer's
    name (and looks like the peer's), but its temp file came first."""
    s = state()
    s.segment_written(seg(10), now=0.0)
    s.segment_written(seg(14), now=10.0)
    s.temp_appeared(temp(12), now=12.0)  # 2 s after 14 passed it
    s.segment_written(seg(20), now=20.0)
    assert s.hole_at(seg(16), now=20.0) == pytest.approx(23.0)


def test_downloads_in_progress_together_mean_a_burst_before_any_lag_is_learned():
    from protocol.recording import BURST_GRACE
    s = state()
    s.segment_written(seg(10), now=0.0)
    s.temp_appeared(temp(12), now=1.0)
    s.segment_written(seg(12), now=1.2)
    s.segment_written(seg(16), now=3.0)  # one download at a time: in order, no grace
    assert s.hole_at(seg(14), now=3.0) == 3.0
    s.temp_appeared(temp(18), now=10.0)
    s.temp_appeared(temp(20), now=10.1)  # two at once: it fell behind
    s.segment_written(seg(22), now=10.5)
    assert s.hole_at(seg(19), now=10.5) == pytest.approx(10.5 + BURST_GRACE)
    assert s.decide(seg(19), now=11.0).reason == "passing"


# ---- declared pairs: deferred from the agent's start, before the first file ----

def declared(grace=30.0, started=100.0, idle=10.0) -> RecordingState:
    """desertbus/source declared; the agent started at `now` 100."""
    return State(idle_after=idle, temp_ttl=60.0, recent_window=120.0,
                 declared=[("desertbus", "source")], declared_grace=grace, started=started)


def test_a_declared_pair_is_deferred_before_its_first_file_until_the_grace():
    s = declared(grace=30.0, started=100.0)
    d = s.decide(seg(12), now=100.0)
    assert (d.status, d.reason) == ("later", "declared")
    assert d.retry_after == retry_after_for(seg(12))
    assert s.recording("desertbus", "source", 130.0)
    assert s.decide(seg(12), now=130.0).reason == "declared"
    # no file of it for the whole grace since the start: its downloader is down
    assert (s.decide(seg(12), now=130.1).status, s.decide(seg(12), now=130.1).reason) \
        == ("want", "idle")
    assert not s.recording("desertbus", "source", 130.1)
    # undeclared pairs, and segments older than the recent window, are wanted as before
    assert s.decide(seg(12, quality="480p"), now=100.0).reason == "idle"
    old = T0 + dt.timedelta(seconds=12 + 121)
    assert s.decide(seg(12), now=100.0, wall_now=old).reason == "old"
    # nothing to time a hole by before the downloader wrote anything
    assert s.hole_at(seg(12), now=110.0, wall_now=WALL) is None


def test_a_declared_pair_follows_the_usual_rules_once_its_files_appear():
    s = declared(grace=30.0, started=100.0)
    s.temp_appeared(temp(10), now=108.0)  # the downloader's first download
    assert s.decide(seg(10), now=108.5).reason == "in_progress"
    assert s.decide(seg(12), now=108.5).reason == "ahead"
    s.segment_written(seg(10), now=109.0)
    s.segment_written(seg(14), now=112.0)  # passed 12 without it: a hole at once
    assert s.decide(seg(12), now=112.0).reason == "hole"
    assert s.decide(seg(16), now=112.0).reason == "ahead"
    # idle for longer than recording-idle, within the grace since its last file:
    # still recorded (a stall), no longer once the grace is over
    assert s.decide(seg(16), now=112.0 + 11).reason == "ahead"
    assert s.hole_at(seg(12), now=112.0 + 11) is not None
    assert s.decide(seg(16), now=112.0 + 30.1).reason == "idle"
    assert s.hole_at(seg(12), now=112.0 + 30.1) is None
    # the same pair undeclared goes idle after recording-idle, as before
    plain = state(idle=10.0)
    plain.segment_written(seg(14), now=112.0)
    assert plain.decide(seg(16), now=112.0 + 11).reason == "idle"


def test_a_declared_pair_deferred_before_the_first_file_becomes_a_hole_once_passed():
    from protocol.recording import HoleWatch
    s, watch = declared(started=0.0), HoleWatch()
    assert s.decide(seg(12), now=1.0).reason == "declared"
    watch.deferred(seg(12), "node-a")
    s.segment_written(seg(14), now=5.0)  # its first file is past 12
    [(item, at)] = watch.plan(s, "desertbus", "source", 5.0, WALL, 120.0)
    assert (item.name, at) == (seg(12), 5.0)


def test_declared_pairs_as_operators_write_them():
    from protocol.recording import MAX_DECLARED, parse_declared_pairs
    assert parse_declared_pairs(["desertbus/source", "desertbus/480p", "desertbus/source"]) \
        == {("desertbus", "source"), ("desertbus", "480p")}
    assert parse_declared_pairs({"desertbus": ["source", "480p"], "other": "source"}) \
        == {("desertbus", "source"), ("desertbus", "480p"), ("other", "source")}
    assert parse_declared_pairs([]) == frozenset()
    for bad, says in ((["desertbus"], "CHANNEL/QUALITY"), (["a/b/c"], "CHANNEL/QUALITY"),
                      (["/source"], "channel is empty"), (["desertbus/.x"], "quality"),
                      ([7], "CHANNEL/QUALITY"), ("desertbus/source", "a list"),
                      ({"desertbus": []}, "qualities"), ({"desertbus": [3]}, "quality"),
                      ([f"c{i}/q" for i in range(MAX_DECLARED + 1)], "at most")):
        with pytest.raises(ValueError, match=says):
            parse_declared_pairs(bad)


def test_records_and_recording_grace_config_keys(tmp_path):
    from agent.config import ConfigError, build_config, load_toml
    from agent.push.recording import DeferralSettings
    toml = tmp_path / "segsync.toml"
    toml.write_text('records = ["desertbus/source"]\nrecording-grace = 45\n')
    cfg = build_config({"root": tmp_path, **load_toml(toml)})
    assert cfg.records == {("desertbus", "source")} and cfg.recording_grace == 45.0
    settings = DeferralSettings.from_config(cfg)
    assert (settings.declared, settings.declared_grace) == ({("desertbus", "source")}, 45.0)
    toml.write_text('[records]\ndesertbus = ["source", "480p"]\n')
    assert build_config({"root": tmp_path, **load_toml(toml)}).records == {
        ("desertbus", "source"), ("desertbus", "480p")}
    default = build_config({"root": tmp_path})
    assert default.records == frozenset() and default.recording_grace == 30.0
    for bad, says in (({"records": ["desertbus"]}, "records: 'desertbus' must be"),
                      ({"records": "desertbus/source"}, "records: must be a list"),
                      ({"recording_grace": 0}, "recording-grace must be > 0")):
        with pytest.raises(ConfigError, match=says):
            build_config({"root": tmp_path, **bad})
