"""Bandwidth limits, sans-I/O: settings, classes, the token bucket and the scheduler
(protocol/bandwidth.py). Time is moved by the tests, never slept."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.bandwidth import (
    MB,
    MIN_BURST,
    RateError,
    RateMeter,
    Scheduler,
    TokenBucket,
    TransferClass,
    burst_for,
    classify,
    describe_rate,
    parse_live_window,
    parse_rate,
)

LIVE, CATCHUP = TransferClass.LIVE, TransferClass.CATCHUP


# ---- settings ----

def test_rates_are_mb_per_second_and_zero_means_none():
    assert parse_rate(20, "max-upload-rate") == 20 * MB
    assert parse_rate(0.5, "x") == 0.5 * MB
    assert parse_rate(0, "x") is None
    assert parse_rate(None, "x") is None
    assert describe_rate(20 * MB) == "20 MB/s"
    assert describe_rate(None) == "no limit"


@pytest.mark.parametrize("bad", [-1, "20", True, float("nan"), 0.001, 1e9, [20]])
def test_bad_rates_say_why(bad):
    with pytest.raises(RateError, match="max-upload-rate"):
        parse_rate(bad, "max-upload-rate")


def test_infinite_rate_is_refused():
    with pytest.raises(RateError):
        parse_rate(math.inf, "x")


@pytest.mark.parametrize("bad", [-1, "600", None, False, 10 * 86400, float("nan")])
def test_bad_live_window(bad):
    with pytest.raises(RateError, match="live-window"):
        parse_live_window(bad)


def test_burst_is_small():
    assert burst_for(20 * MB) == 1 * MB  # 50 ms
    assert burst_for(0.1 * MB) == MIN_BURST


# ---- classes ----

NOW = dt.datetime(2026, 12, 6, 18, 0, tzinfo=dt.timezone.utc)


def test_tombstones_are_live():
    assert classify(None, NOW, 600) is LIVE


def test_recent_segments_are_live_old_ones_catch_up():
    assert classify(NOW - dt.timedelta(seconds=2), NOW, 600) is LIVE
    assert classify(NOW - dt.timedelta(seconds=600), NOW, 600) is LIVE
    assert classify(NOW - dt.timedelta(seconds=601), NOW, 600) is CATCHUP
    assert classify(NOW - dt.timedelta(hours=30), NOW, 600) is CATCHUP
    assert classify(NOW + dt.timedelta(seconds=5), NOW, 600) is LIVE  # a clock ahead


# ---- token bucket ----

def test_bucket_starts_full_refills_at_the_rate_and_caps_at_the_burst():
    b = TokenBucket(1000, now=0.0, burst=500)
    assert b.take(500, 0.0)
    assert not b.take(1, 0.0)
    assert b.ready_at(100, 0.0) == pytest.approx(0.1)
    assert b.take(100, 0.1)
    assert b.ready_at(500, 100.0) == 100.0  # long idle: still only a burst
    assert b.take(500, 100.0) and not b.take(1, 100.0)


def test_bucket_rate_change_shrinks_what_it_holds():
    b = TokenBucket(20 * MB, now=0.0)
    b.set_rate(1 * MB, 0.0)
    assert b.burst == burst_for(1 * MB)
    assert b.tokens == b.burst


# ---- scheduler ----

def drive(s: Scheduler, until: float, step: float = 0.001):
    """Grant as time moves (every `step` seconds, or at the next grant time):
    [(time, request)] of the requests wholly granted."""
    out, now = [], 0.0
    while now <= until:
        out += [(now, r) for r in s.grant(now)]
        nxt = s.next_grant_at(now)
        if nxt is None:
            break
        now = max(now + step, nxt) if nxt <= now else nxt
    return out


def test_no_limit_grants_at_once_and_counts():
    s = Scheduler(None, 0.0)
    r = s.ask("a", CATCHUP, 10 * MB, 0.0)
    assert s.grant(0.0) == [r]
    assert s.counters[CATCHUP].bytes == 10 * MB
    s.count(LIVE, 300, 0.0)
    assert s.counters[LIVE].bytes == 300


def test_a_limit_holds_over_any_span():
    rate = 1 * MB
    s = Scheduler(rate, 0.0)
    for i in range(20):
        s.ask(f"p{i % 3}", CATCHUP if i % 2 else LIVE, 300_000, 0.0)
    granted: list[tuple[float, int]] = []
    now = 0.0
    while s.head() is not None:
        before = s.counters[LIVE].bytes + s.counters[CATCHUP].bytes
        s.grant(now)
        after = s.counters[LIVE].bytes + s.counters[CATCHUP].bytes
        if after > before:
            granted.append((now, after - before))
        now = s.next_grant_at(now) or now
    total = sum(n for _, n in granted)
    assert total == 20 * 300_000
    burst = burst_for(rate)
    for i, (t0, _) in enumerate(granted):  # every window: at most rate * span + burst
        moved = 0
        for t1, n in granted[i:]:
            moved += n
            assert moved <= rate * (t1 - t0) + burst + 1
    assert now == pytest.approx((total - burst) / rate, rel=1e-6)  # and no slower


def test_live_goes_first_and_catch_up_gets_only_what_live_leaves():
    s = Scheduler(1 * MB, 0.0)
    s.grant(0.0)
    catchup = [s.ask("c", CATCHUP, 200_000, 0.0) for _ in range(5)]
    s.grant(0.0)  # the burst goes to catch-up: nobody else waits
    live = s.ask("b", LIVE, 300_000, 0.01)
    tomb = s.ask("b", LIVE, 200, 0.02)
    order = [r for _, r in drive(s, 10.0)]
    assert order.index(live) < min(order.index(c) for c in catchup if c in order)
    assert order.index(tomb) < min(order.index(c) for c in catchup if c in order)
    assert s.counters[LIVE].waited > 0 and s.counters[CATCHUP].waited > 0


def test_catch_up_pieces_stop_while_live_waits():
    s = Scheduler(1 * MB, 0.0)
    big = s.ask("c", CATCHUP, 5 * MB, 0.0)
    s.grant(0.0)
    at = 0.5
    s.grant(at)
    taken = s.counters[CATCHUP].bytes
    live = s.ask("b", LIVE, 2 * MB, at)
    while not live.done:
        at = s.next_grant_at(at)
        s.grant(at)
        assert s.counters[CATCHUP].bytes == taken  # not one byte while live waits
    assert not big.done
    drive(s, 100.0)
    assert big.done


def test_peers_share_a_class_fairly_by_bytes():
    s = Scheduler(1 * MB, 0.0)
    # peer a has ten transfers in flight, peer b one at a time
    for _ in range(10):
        s.ask("a", CATCHUP, 100_000, 0.0)
    now = 0.0
    got = {"a": 0, "b": 0}
    b = s.ask("b", CATCHUP, 100_000, 0.0)
    while now < 0.8:
        for r in s.grant(now):
            got[r.peer] += r.nbytes
            if r.peer == "b":
                b = s.ask("b", CATCHUP, 100_000, now)  # b asks again at once
        now = s.next_grant_at(now)
    assert abs(got["a"] - got["b"]) <= 100_000


def test_a_peer_back_from_idle_earns_no_credit():
    s = Scheduler(1 * MB, 0.0)
    s.ask("a", CATCHUP, 3 * MB, 0.0)
    now = 0.0
    while now < 2.0:
        s.grant(now)
        now = s.next_grant_at(now)
    s.ask("b", CATCHUP, 3 * MB, now)
    start = dict(s.served[CATCHUP])
    assert start["b"] == min(start.values())  # level with a, not zero
    assert start["b"] == start["a"]
    while now < 3.0:
        s.grant(now)
        now = s.next_grant_at(now)
    a, b = (s.served[CATCHUP][p] - start[p] for p in "ab")
    assert abs(a - b) <= burst_for(MB)


def test_cancelled_request_leaves_the_queue_and_counts_its_wait():
    s = Scheduler(1 * MB, 0.0)
    s.grant(0.0)
    s.ask("c", CATCHUP, burst_for(MB), 0.0)
    s.grant(0.0)
    r = s.ask("c", CATCHUP, 10 * MB, 0.0)
    s.cancel(r, 2.0)
    assert s.head() is None and s.queues[CATCHUP] == {} and s.served[CATCHUP] == {}
    assert s.counters[CATCHUP].waiting == 0
    assert s.counters[CATCHUP].waited == pytest.approx(2.0)
    s.cancel(r, 3.0)  # twice: nothing more
    assert s.counters[CATCHUP].waited == pytest.approx(2.0)


def test_lifting_the_limit_lets_everyone_through():
    s = Scheduler(0.1 * MB, 0.0)
    s.grant(0.0)
    waiting = [s.ask("c", CATCHUP, 1 * MB, 0.0) for _ in range(3)]
    assert s.grant(0.0) == []
    assert sorted(map(id, s.set_rate(None, 1.0))) == sorted(map(id, waiting))
    assert s.rate is None and s.head() is None


def test_changing_the_limit_changes_the_pace():
    s = Scheduler(1 * MB, 0.0)
    s.grant(0.0)
    s.ask("c", CATCHUP, 100 * MB, 0.0)
    s.grant(0.0)
    s.set_rate(4 * MB, 0.0)
    t = s.next_grant_at(0.0)
    s.grant(t)
    before = s.counters[CATCHUP].bytes
    now = t
    while now <= t + 1.0:
        s.grant(now)
        now = s.next_grant_at(now)
    # a second's worth at the new rate (pieces: whole bursts only)
    assert 4 * MB - burst_for(4 * MB) <= s.counters[CATCHUP].bytes - before <= 4 * MB


def test_rate_meter_averages_the_last_seconds():
    m = RateMeter(window=3.0)
    for i in range(40):
        m.add(100_000, i * 0.1)  # 1 MB/s for 4 s
    assert m.rate(4.0) == pytest.approx(1 * MB, rel=0.05)
    assert m.rate(100.0) == 0.0


@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(list(TransferClass)),
                          st.integers(1, 3 * MB)), min_size=1, max_size=30),
       st.floats(0.1, 50))
def test_every_request_is_granted_and_the_limit_holds(asks, rate_mb):
    rate = rate_mb * MB
    s = Scheduler(rate, 0.0)
    requests = [s.ask(p, c, n, 0.0) for p, c, n in asks]
    now, moved = 0.0, 0
    while s.head() is not None:
        s.grant(now)
        moved = sum(c.bytes for c in s.counters.values())
        assert moved <= rate * now + burst_for(rate) + 1
        now = s.next_grant_at(now) or now
    assert all(r.done for r in requests)
    assert moved == sum(n for _, _, n in asks)
    assert all(c.waiting == 0 for c in s.counters.values())
