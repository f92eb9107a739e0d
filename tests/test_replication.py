"""Pure replication decisions (what a backfill round fetches) and per-peer backoff."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from protocol.backoff import Backoff, backoff_delay, jittered
from protocol.hashing import encode_hash
from protocol.names import Kind, parse_filename
from protocol.replication import differing_keys, newest_first, offer_status, plan_hour

UTC = dt.timezone.utc
C, Q, HOUR = "desertbus", "source", "2019-11-13T02"
NOW = dt.datetime(2019, 11, 13, 2, 30, 0, tzinfo=UTC)


def fname(minute: int, second: int = 0, type_: str = "full", seed: int = 0,
          suffix: str = ".ts", micro: int = 0) -> str:
    digest = encode_hash(random.Random(f"{minute}:{second}:{type_}:{seed}").randbytes(32))
    return f"{minute:02d}:{second:02d}.{micro:06d}-2.0-{type_}-{digest}{suffix}"


def tomb(segment: str) -> str:
    return segment[: -len(".ts")] + ".tombstone"


def plan(peer, local=(), now=NOW, window=0.0):
    return plan_hour(C, Q, HOUR, peer, set(local), now, window)


def filenames(names) -> list[str]:
    return [n.filename for n in names]


# ---- plan_hour ----

def test_missing_is_peer_minus_ours_minus_our_tombstones():
    ours, theirs_only, tombstoned_here = fname(1), fname(2), fname(3)
    hidden_here = fname(4)  # we hold it, hidden by our tombstone
    peer = [ours, theirs_only, tombstoned_here, hidden_here]
    local = [ours, tomb(tombstoned_here), hidden_here, tomb(hidden_here)]
    p = plan(peer, local)
    assert filenames(p.fetch) == [theirs_only]
    assert p.skipped_tombstoned == 1
    assert p.tombstones == []
    assert (p.skipped_recent, p.skipped_temp, p.invalid) == (0, 0, 0)


def test_in_sync_plans_nothing():
    names = [fname(i) for i in range(5)] + [tomb(fname(9))]
    p = plan(names, names)
    assert p.fetch == [] and p.tombstones == []


def test_tombstones_are_always_taken():
    seg = fname(5)
    # we hold the segment; the peer holds its tombstone (and no longer lists the .ts)
    p = plan([tomb(seg), tomb(fname(6))], [seg])
    assert sorted(n.tombstone_filename for n in p.tombstones) == sorted([tomb(seg), tomb(fname(6))])
    assert all(isinstance(n.hour, str) and n.hour == HOUR for n in p.tombstones)
    # even a tombstone of a segment that started a moment ago: the window is for downloads
    recent = fname(29, 59)
    p = plan([tomb(recent)], [], window=3600)
    assert [n.tombstone_filename for n in p.tombstones] == [tomb(recent)]
    assert p.skipped_recent == 0
    # one we already hold is not taken again
    assert plan([tomb(seg)], [tomb(seg)]).tombstones == []


def test_temp_is_never_fetched():
    temp = fname(7, type_="temp")
    p = plan([temp, fname(8, type_="partial"), fname(9, type_="suspect")])
    assert p.skipped_temp == 1
    assert sorted(n.type for n in p.fetch) == ["partial", "suspect"]


def test_a_segment_starting_after_now_is_recent():
    # (a peer's clock ahead of ours): it is left for a later round, not fetched
    p = plan([fname(31)], window=0)
    assert p.fetch == [] and p.skipped_recent == 1


def test_recent_window_boundary_uses_the_given_now():
    window = 120.0
    at_cutoff = fname(28, 0)       # started exactly `window` seconds before NOW
    inside = fname(28, 0, micro=1)  # one microsecond later: younger than the window
    old = fname(10)
    p = plan([at_cutoff, inside, old], window=window)
    assert filenames(p.fetch) == [at_cutoff, old]
    assert p.skipped_recent == 1
    # the same listing an hour later: nothing is recent any more
    later = plan([at_cutoff, inside, old], now=NOW + dt.timedelta(hours=1), window=window)
    assert later.skipped_recent == 0 and len(later.fetch) == 3
    # window 0 fetches everything that has started
    assert len(plan([at_cutoff, inside, old], window=0).fetch) == 3


def test_fetch_is_newest_first():
    names = [fname(m, s) for m, s in [(3, 0), (45, 10), (0, 1), (59, 59), (12, 30)]]
    p = plan(random.Random(1).sample(names, len(names)), now=NOW + dt.timedelta(hours=1))
    starts = [n.start for n in p.fetch]
    assert starts == sorted(starts, reverse=True)
    assert len(starts) == 5


def test_invalid_names_are_counted_not_fetched():
    good = fname(1)
    bad = ["not-a-segment.ts", "01:00.000000-2.0-full-short.ts",
           "61:00.000000-2.0-full-" + "A" * 43 + ".ts", "../escape.ts", good + ".bak"]
    p = plan(bad + [good])
    assert p.invalid == len(bad)
    assert filenames(p.fetch) == [good]


def test_plan_names_belong_to_the_hour_asked():
    p = plan([fname(14, 7)])
    (name,) = p.fetch
    assert (name.channel, name.quality, name.hour) == (C, Q, HOUR)
    assert name.start == dt.datetime(2019, 11, 13, 2, 14, 7, tzinfo=UTC)
    assert parse_filename(C, Q, HOUR, name.filename) == (name, Kind.SEGMENT)


# ---- digest comparison helpers ----

def test_differing_keys_lists_changed_and_remote_only():
    local = {"a": b"1", "b": b"2", "only-ours": b"3"}
    remote = {"a": b"1", "b": b"X", "only-theirs": b"4"}
    assert sorted(differing_keys(local, remote)) == ["b", "only-theirs"]
    assert differing_keys(remote, remote) == []


def test_newest_first_hours():
    hours = ["2019-11-13T02", "2019-11-12T23", "2019-11-13T10", "2019-11-13T09"]
    assert newest_first(hours) == ["2019-11-13T10", "2019-11-13T09", "2019-11-13T02",
                                   "2019-11-12T23"]


def test_offer_status():
    assert offer_status(False, False) == "want"
    assert offer_status(True, False) == "have"
    assert offer_status(True, True) == "tombstoned"
    assert offer_status(False, True) == "tombstoned"


# ---- backoff ----

@pytest.mark.parametrize("seed", range(5))
def test_delays_grow_are_capped_and_jittered_within_bounds(seed):
    rng = random.Random(seed)
    base, cap = 0.5, 20.0
    for failures in range(1, 40):
        ceiling = min(cap, base * 2 ** (failures - 1))
        d = backoff_delay(failures, base, cap, rng)
        assert ceiling / 2 <= d <= ceiling
    assert backoff_delay(0, base, cap, rng) == 0.0
    # growth: the lower bound of failure n+1 is the upper bound of failure n, until the cap
    assert backoff_delay(3, base, cap, rng) >= backoff_delay(2, base, cap, rng)
    # huge failure counts do not overflow
    assert backoff_delay(10_000, base, cap, rng) <= cap


def test_delays_are_actually_jittered():
    rng = random.Random(7)
    draws = {backoff_delay(4, 1.0, 100.0, rng) for _ in range(50)}
    assert len(draws) > 40
    assert min(draws) >= 4.0 and max(draws) <= 8.0


def test_backoff_ready_and_wait_time_with_an_explicit_clock():
    b = Backoff(base=1.0, cap=10.0, rng=random.Random(3))
    assert b.ready(0.0) and b.wait_time(0.0) == 0.0
    delay = b.failure(now=100.0)
    assert 0.5 <= delay <= 1.0
    assert b.not_before == pytest.approx(100.0 + delay)
    assert not b.ready(100.0)
    assert b.wait_time(100.0) == pytest.approx(delay)
    assert b.wait_time(100.0 + delay / 2) == pytest.approx(delay / 2)
    assert b.ready(100.0 + delay) and b.wait_time(100.0 + delay + 5) == 0.0
    # consecutive failures push further out, never past the cap
    delays = [b.failure(now=200.0) for _ in range(10)]
    assert b.failures == 11
    assert all(d <= 10.0 for d in delays) and delays[-1] >= 5.0
    assert not b.ready(204.9)


def test_backoff_success_resets():
    b = Backoff(base=2.0, cap=60.0, rng=random.Random(4))
    for _ in range(6):
        b.failure(now=0.0)
    b.success()
    assert b.failures == 0 and b.ready(0.0) and b.wait_time(0.0) == 0.0
    # and the next failure starts over from the base
    assert 1.0 <= b.failure(now=0.0) <= 2.0


def test_peers_back_off_independently():
    a, b = Backoff(rng=random.Random(1)), Backoff(rng=random.Random(2))
    for _ in range(5):
        a.failure(now=0.0)
    assert not a.ready(0.0) and b.ready(0.0)


def test_jittered_interval_bounds():
    rng = random.Random(9)
    draws = [jittered(60.0, 0.2, rng) for _ in range(200)]
    assert all(48.0 <= d <= 72.0 for d in draws)
    assert max(draws) - min(draws) > 10  # spread, not a constant
    assert jittered(0.0, 0.2, rng) == 0.0
