"""The scrub's pure decisions (protocol.scrub): order, resume, rate, verdicts, state."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import make_name
from protocol import messages as m
from protocol.scrub import (
    EMPTY,
    EMPTY_HASH,
    GOOD,
    MISMATCH,
    UNREADABLE,
    RateBudget,
    RottenBytes,
    ScrubState,
    ScrubStateError,
    ServedBytesCheck,
    advance,
    begin_pass,
    decode_state,
    encode_state,
    end_pass,
    hour_after_cursor,
    hours_oldest_first,
    pass_wait,
    quarantine_relpath,
    remaining_in_hour,
    should_checkpoint,
    verdict,
)

H = "A" * 43
FILE_A = f"00:01.000000-2.0-full-{H}.ts"
FILE_B = f"00:03.000000-2.0-full-{H}.ts"
FILE_C = f"59:59.000000-2.0-full-{H}.ts"


def test_hours_oldest_first_across_pairs():
    order = hours_oldest_first([
        ("b", "source", ["2024-01-01T05", "2023-12-31T23"]),
        ("a", "480p", ["2024-01-01T05"]),
    ])
    assert order == [("2023-12-31T23", "b", "source"), ("2024-01-01T05", "a", "480p"),
                     ("2024-01-01T05", "b", "source")]


def test_resume_skips_what_the_cursor_passed():
    cursor = ("2024-01-01T05", "a", "480p", FILE_B)
    assert not hour_after_cursor(("2024-01-01T04", "z", "z"), cursor)
    assert hour_after_cursor(("2024-01-01T05", "a", "480p"), cursor)
    assert hour_after_cursor(("2024-01-01T05", "b", "source"), cursor)
    files = [FILE_C, FILE_A, FILE_B]
    assert remaining_in_hour(("2024-01-01T05", "a", "480p"), files, cursor) == [FILE_C]
    assert remaining_in_hour(("2024-01-01T05", "b", "source"), files, cursor) == [
        FILE_A, FILE_B, FILE_C]
    assert remaining_in_hour(("2024-01-01T04", "a", "480p"), files, cursor) == []
    assert remaining_in_hour(("2024-01-01T04", "a", "480p"), files, None) == [
        FILE_A, FILE_B, FILE_C]


@given(st.lists(st.tuples(st.sampled_from(["2024-01-01T00", "2024-01-01T01", "2024-01-02T00"]),
                          st.sampled_from(["a", "b"]),
                          st.sampled_from([FILE_A, FILE_B, FILE_C])), unique=True, max_size=18),
       st.integers(0, 20))
def test_a_resumed_pass_checks_exactly_the_rest(entries, stop_after):
    """Stopping anywhere and resuming from the cursor checks every segment once."""
    by_hour: dict = {}
    for hour, channel, f in entries:
        by_hour.setdefault((hour, channel, "q"), []).append(f)
    pairs = {}
    for hour, channel, q in by_hour:
        pairs.setdefault((channel, q), []).append(hour)

    def run(cursor, limit):
        checked = []
        for key in hours_oldest_first((c, q, hs) for (c, q), hs in pairs.items()):
            if not hour_after_cursor(key, cursor):
                continue
            for f in remaining_in_hour(key, by_hour[key], cursor):
                if len(checked) == limit:
                    return checked
                checked.append((*key, f))
        return checked

    first = run(None, stop_after)
    cursor = first[-1] if first else None
    rest = run(cursor, None)
    assert sorted(first + rest) == sorted((h, c, "q", f) for h, c, f in entries)
    assert len(first + rest) == len(entries)


def test_pass_schedule():
    fresh = ScrubState()
    assert pass_wait(fresh, 1000.0, 3600) == 0
    running = begin_pass(fresh, 1000.0)
    assert running.in_progress and running.cursor is None
    moved = advance(running, ("2024-01-01T05", "a", "q", FILE_A))
    assert begin_pass(moved, 2000.0) == moved  # a resumed pass keeps its cursor
    assert pass_wait(moved, 99999.0, 3600) == 0  # an interrupted pass resumes at once
    done = end_pass(moved, 1500.0)
    assert not done.in_progress and done.cursor is None and done.last_full_pass == 1500.0
    assert pass_wait(done, 1600.0, 3600) == pytest.approx(3500.0)
    assert pass_wait(done, 9000.0, 3600) == 0
    assert begin_pass(done, 9000.0).pass_started == 9000.0


def test_checkpoint_every():
    assert not should_checkpoint(10.0, 10.5, 1.0)
    assert should_checkpoint(10.0, 11.0, 1.0)


def test_state_round_trip():
    state = ScrubState(("2024-01-01T05", "a", "480p", FILE_A), 12.5, 3.0)
    assert decode_state(encode_state(state)) == state
    assert decode_state(encode_state(ScrubState())) == ScrubState()


@pytest.mark.parametrize("data", [
    b"", b"junk", b"[]", b'{"v": 2}', b'{"v": 1, "cursor": "x"}',
    b'{"v": 1, "cursor": ["2024-01-01T05", "a", "q"]}',
    b'{"v": 1, "cursor": ["2024-01-01T05", "..", "q", "x.ts"]}',
    b'{"v": 1, "last_full_pass": "yesterday"}', b'{"v": 1, "pass_started": true}',
    b'{"v": 1, "pass_started": NaN}', b" " * 5000,
])
def test_bad_state_is_refused(data):
    with pytest.raises(ScrubStateError):
        decode_state(data)


def test_rate_budget_holds_the_rate():
    budget = RateBudget(1_000_000)
    now, waited = 0.0, 0.0
    for _ in range(100):  # 10 MB in 100 KB slices, reading takes no time
        wait = budget.delay(100_000, now)
        now += wait
        waited += wait
    assert waited == pytest.approx(10.0, abs=1.0)  # ~10 s for 10 MB at 1 MB/s
    assert budget.slice_bytes(8 << 20) == 100_000  # a tenth of a second's worth


def test_rate_budget_after_idle_allows_one_second_burst_only():
    budget = RateBudget(1_000_000)
    budget.delay(0, 0.0)
    assert budget.delay(1_000_000, 3600.0) == 0  # a second's worth saved up, no more
    assert budget.delay(500_000, 3600.0) == pytest.approx(0.5)


def test_unlimited_rate():
    budget = RateBudget(None)
    assert budget.delay(10**9, 0.0) == 0
    assert budget.slice_bytes(8 << 20) == 8 << 20
    with pytest.raises(ValueError):
        RateBudget(0)


def test_verdicts():
    good = hashlib.sha256(b"abc").digest()
    assert verdict(good, good, 3) == GOOD
    assert verdict(good, hashlib.sha256(b"ab").digest(), 2) == MISMATCH
    assert verdict(good, EMPTY_HASH, 0) == EMPTY
    assert verdict(good, None, 0) == UNREADABLE


def test_served_bytes_check_holds_back_the_last_chunk():
    data = b"x" * 1000
    good = hashlib.sha256(data).digest()
    check = ServedBytesCheck("p", good, 1000)
    check.update(data[:600])
    check.update(data[600:])  # whole and good: no error
    bad = ServedBytesCheck("p", good, 1000)
    bad.update(data[:600])  # not complete yet: cannot know
    with pytest.raises(RottenBytes):
        bad.update(b"y" * 400)  # the chunk that completes it does not go out
    with pytest.raises(RottenBytes):
        ServedBytesCheck("p", good, 0)  # empty: refused before anything is sent
    ServedBytesCheck("p", EMPTY_HASH, 0)  # a genuinely empty segment is fine


def test_quarantine_paths_never_collide():
    path = f"a/q/2024-01-01T05/{FILE_A}"
    assert quarantine_relpath(path) == f".quarantine/{path}"
    assert quarantine_relpath(path, 2) == f".quarantine/{path}.2"
    with pytest.raises(ValueError):
        quarantine_relpath(path, -1)


def test_status_shows_the_scrub_and_every_lost_segment():
    from agent.commands.status_view import render_status

    lost, at = (make_name(data, dt.datetime(2024, 1, 1, 5, 0, 1)) for data in (b"x", b"y"))
    out = render_status(m.StatusReply(
        node="a", url="u", started_at=0, time=7200, segments=3, peers=[],
        scrub=m.ScrubStatus(checked=10, bytes=100, rotten=2, healed=1, lost=1,
                            lost_paths=[lost.path], last_full_pass=3600.0,
                            pass_started=7000.0, position=at.path)))
    # wrapped at spaces to 100 columns, segment hashes shortened (`--json` has them whole)
    short = at.path.replace(at.hash_text, at.hash_text[:8] + "…")
    assert (f"scrub: last full pass 60m ago, pass in progress at {short}; "
            "since start 10 checked, 2 rotten, 1 healed, 1 lost") in " ".join(out.split())
    assert max(map(len, out.splitlines())) <= 100
    lines = out.splitlines()
    i = lines.index("  LOST (in quarantine, no peer had a good copy):")
    assert lines[i + 1] == "    " + lost.path.replace(lost.hash_text, lost.hash_text[:8] + "…")
    idle = render_status(m.StatusReply(
        node="a", url="u", started_at=0, time=7200, segments=3, peers=[],
        scrub=m.ScrubStatus(checked=0, bytes=0, rotten=0, healed=0, lost=0)))
    assert "scrub: last full pass never, idle; since start 0 checked" in idle
    assert "scrub:" not in render_status(m.StatusReply("a", "u", 0, 7200, 3, []))
