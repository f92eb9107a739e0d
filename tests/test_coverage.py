"""The coverage map model (protocol/coverage.py): pure, no files, no sockets."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.coverage import (
    A_ONLY, B_ONLY, EMPTY, FULL, FUTURE, HOLE, PARTIAL, SAME, TOMB_DIFF, TOMBSTONED,
    CoverageError, count_cells, diff_row, hour_range, hour_row, hour_spans, map_window, merge,
    pair_rows,
)

HASH = "7IS92rssMzoSBQDIevHStbTNy-URRV3Vw-jzZ6pwOZM"
HASH2 = "A" * 43


def seg(seconds: float, duration: str = "2.0", type_: str = "full", h: str = HASH,
        suffix: str = "ts") -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes):02d}:{secs:09.6f}-{duration}-{type_}-{h}.{suffix}"


def run(start: float, end: float, step: float = 2.0, type_: str = "full") -> list[str]:
    """Back-to-back segments of `step` seconds from start up to end."""
    out, t = [], start
    while t < end - 1e-9:
        out.append(seg(t, f"{step}", type_))
        t += step
    return out


def row_of(names, previous=(), **kw) -> str:
    return hour_row(hour_spans(names), hour_spans(previous), **kw)


def test_a_fully_held_hour_is_all_full():
    assert row_of(run(0, 3600)) == FULL * 60


def test_empty_hour_is_all_holes():
    assert hour_row(EMPTY) == HOLE * 60


def test_a_missing_segment_makes_its_minute_a_hole():
    names = [n for n in run(0, 3600) if not n.startswith("07:10.")]
    row = row_of(names)
    assert row[7] == HOLE and row.count(HOLE) == 1


def test_a_segment_across_a_minute_boundary_leaves_both_minutes_holed_when_missing():
    names = [seg(0)] + [n for n in run(2, 3600, step=4.0) if not n.startswith("02:58.")]
    row = row_of(names)
    assert row[2] == HOLE and row[3] == HOLE and row.count(HOLE) == 2


def test_overlapping_segments_count_once_and_cover():
    # 3 s segments every 2 s overlap by 1 s: still exactly covered, never "more than full"
    names = run(0, 3600, step=2.0)
    overlapping = [seg(t, "3.0", h=HASH2) for t in range(0, 3600, 2)]
    assert row_of(names + overlapping) == FULL * 60
    assert row_of(overlapping) == FULL * 60


def test_rounding_gaps_between_consecutive_segments_are_no_holes():
    names = [seg(t * 2.002, "2.0019") for t in range(0, 1799)] + [seg(3599.0, "1.0")]
    assert row_of(names) == FULL * 60


def test_partial_and_suspect_only_cover_as_partial():
    names = run(0, 3600)
    names = [n for n in names if not n.startswith("05:")] + run(300, 360, type_="partial")
    names = [n for n in names if not n.startswith("06:")] + run(360, 420, type_="suspect")
    row = row_of(names)
    assert row[5] == PARTIAL and row[6] == PARTIAL and row.count(FULL) == 58


def test_a_full_version_beside_a_partial_one_wins():
    names = run(0, 3600) + run(0, 3600, type_="partial")
    assert row_of(names) == FULL * 60


def test_half_partial_half_nothing_is_a_hole():
    names = [n for n in run(0, 3600) if not n.startswith("09:")] + run(540, 570, type_="partial")
    assert row_of(names)[9] == HOLE


def test_temp_segments_cover_nothing():
    assert row_of(run(0, 3600, type_="temp")) == HOLE * 60


def test_a_tombstoned_segment_is_hidden_and_marks_its_minute():
    names = run(0, 3600)
    victim = seg(20 * 60 + 10)
    assert victim in names
    row = row_of(names + [victim.replace(".ts", ".tombstone")])
    assert row[20] == TOMBSTONED and row.count(FULL) == 59


def test_a_tombstone_without_its_segment_marks_the_hole():
    names = [n for n in run(0, 3600) if not n.startswith("30:")]
    row = row_of(names + [seg(30 * 60 + 4, suffix="tombstone")])
    assert row[30] == TOMBSTONED


def test_a_tombstone_in_a_minute_covered_by_another_version_stays_full():
    names = run(0, 3600) + [seg(40 * 60, h=HASH2, suffix="tombstone"), seg(40 * 60, h=HASH2)]
    assert row_of(names)[40] == FULL


def test_a_segment_running_past_the_hour_covers_the_start_of_the_next():
    previous = run(0, 3599) + [seg(3599.0, "3.0")]  # ends 2 s into the next hour
    names = run(2, 3600)
    assert row_of(names)[0] == HOLE
    assert row_of(names, previous)[0] == FULL


def test_the_next_hour_spill_is_not_counted_in_its_own_hour():
    spans = hour_spans([seg(3599.0, "30.0")])
    assert hour_row(spans)[59] == HOLE  # only 1 s of minute 59 is covered
    assert spans.full == ((3599.0, 3629.0),)


def test_cells_of_one_second_for_the_static_maps():
    names = [n for n in run(0, 3600) if not n.startswith("00:10.")]
    row = row_of(names, cell_seconds=1)
    assert len(row) == 3600 and row[10:12] == HOLE * 2 and row.count(HOLE) == 2


def test_future_cells():
    row = row_of(run(0, 600), future_from=600.0)
    assert row == FULL * 10 + FUTURE * 50
    # what is held after "now" (a clock behind the downloader's) still shows
    row = row_of(run(0, 720), future_from=600.0)
    assert row == FULL * 12 + FUTURE * 48


@pytest.mark.parametrize("cell", [0, -1, 7, 7200])
def test_cell_size_must_divide_the_hour(cell):
    with pytest.raises(CoverageError):
        hour_row(EMPTY, cell_seconds=cell)


@pytest.mark.parametrize("bad", ["junk.ts", seg(0)[:-3], seg(0).replace("full", "odd"), "",
                                 seg(2) + "\n" + seg(4),
                                 "61:00.000000-2.0-full-" + HASH + ".ts"])
def test_a_name_that_is_no_segment_name_is_an_error(bad):
    with pytest.raises(CoverageError, match="not a segment"):
        hour_spans([seg(0), bad])


def test_merge():
    assert merge([(5, 6), (0, 2), (1, 3), (3.0005, 4)]) == ((0, 4), (5, 6))
    assert merge([]) == ()


@given(st.lists(st.tuples(st.integers(0, 1799), st.sampled_from(["full", "partial"])),
                max_size=60))
def test_holes_and_full_cells_match_a_per_second_count(picks):
    """Property: with 2 s segments, a minute is FULL iff all its 30 slots hold a full."""
    chosen = {}
    for slot, type_ in picks:
        if chosen.get(slot) != "full":
            chosen[slot] = type_
    row = row_of([seg(slot * 2.0, type_=t) for slot, t in chosen.items()])
    for minute in range(60):
        slots = [chosen.get(minute * 30 + i) for i in range(30)]
        if all(s == "full" for s in slots):
            assert row[minute] == FULL
        elif all(s is not None for s in slots):
            assert row[minute] == PARTIAL
        else:
            assert row[minute] == HOLE


def test_hour_range_and_its_bound():
    assert hour_range("2026-01-01T22", "2026-01-02T01") == [
        "2026-01-01T22", "2026-01-01T23", "2026-01-02T00", "2026-01-02T01"]
    assert hour_range("2026-01-02T01", "2026-01-01T22") == []
    with pytest.raises(CoverageError):
        hour_range("2026-01-01T00", "2026-01-10T00", max_hours=24)


def test_map_window_starts_at_the_first_held_hour_and_ends_now():
    now = dt.datetime(2026, 1, 2, 3, 30, tzinfo=dt.timezone.utc)
    held = ["2025-12-01T00", "2026-01-02T01", "2026-01-02T02"]
    assert map_window(held, now, 4) == ["2026-01-02T01", "2026-01-02T02", "2026-01-02T03"]
    assert map_window(held, now, 48)[0] == "2026-01-02T01"
    assert map_window(held, now, 800)[0] == "2025-12-01T00"
    assert map_window(["2025-01-01T00"], now, 4) == []
    with pytest.raises(CoverageError):
        map_window(held, now, 0)


def test_pair_rows_fill_missing_hours_and_mark_the_future():
    spans = {"2026-01-02T01": hour_spans(run(0, 3600))}
    now = dt.datetime(2026, 1, 2, 2, 30, tzinfo=dt.timezone.utc)
    rows = pair_rows(spans, ["2026-01-02T01", "2026-01-02T02"], now=now)
    assert rows == [FULL * 60, HOLE * 30 + FUTURE * 30]


def test_diff_rows():
    a = FULL + FULL + HOLE + TOMBSTONED + PARTIAL + FUTURE
    b = FULL + HOLE + FULL + HOLE + FULL + FUTURE
    assert diff_row(a, b) == SAME + A_ONLY + B_ONLY + TOMB_DIFF + B_ONLY + SAME
    with pytest.raises(CoverageError):
        diff_row("FF", "F")


def test_count_cells():
    assert count_cells(["FFH", "T-"]) == {FULL: 2, HOLE: 1, TOMBSTONED: 1, FUTURE: 1}
