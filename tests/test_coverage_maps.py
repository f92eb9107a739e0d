"""Maps from the in-memory index: cached spans, computed in a worker thread, voided
by any change made meanwhile."""

from __future__ import annotations

import datetime as dt

from agent.serve.coverage_maps import local_maps, warm_spans
from agent.archive.index import ArchiveIndex
from protocol.coverage import FULL, FUTURE, HOLE, hour_spans
from protocol.names import Kind, format_hour, parse_path

HASH = "7IS92rssMzoSBQDIevHStbTNy-URRV3Vw-jzZ6pwOZM"
NOW = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.timezone.utc)


def full_hour(skip: int | None = None) -> list[str]:
    return [f"{s // 60:02d}:{s % 60:02d}.000000-2.0-full-{HASH}.ts"
            for s in range(0, 3600, 2) if skip is None or s // 60 != skip]


def make_index(hours: int) -> ArchiveIndex:
    index = ArchiveIndex()
    index.replace_all(("c", "q", format_hour(NOW - dt.timedelta(hours=h)), full_hour())
                      for h in range(1, hours + 1))
    return index


async def test_warm_spans_caches_the_window_only():
    index = make_index(10)
    await warm_spans(index, NOW, 3)
    hours = index.hours("c", "q")
    cached = [h for h in hours if index.entries("c", "q", h, h)[0].claim_spans() is None]
    assert cached == hours[-3:]  # the map's hours (2) and the one before
    assert index.hour_spans("c", "q", hours[-1]) == hour_spans(full_hour())


async def test_a_change_voids_a_claim_made_before_it():
    index = make_index(1)
    hour = format_hour(NOW - dt.timedelta(hours=1))
    [entry] = index.entries("c", "q", hour, hour)
    token, names = entry.claim_spans()
    name, kind = parse_path(f"c/q/{hour}/{full_hour()[0]}".replace(".ts", ".tombstone"))
    index.add(name, kind)
    entry.offer_spans(token, hour_spans(names))  # stale: dropped
    assert index.hour_spans("c", "q", hour).tombstones == (0.0,)


async def test_local_maps_from_the_index():
    index = make_index(2)
    [m] = local_maps(index, NOW, 24)
    assert m.hours == [format_hour(NOW - dt.timedelta(hours=h)) for h in (2, 1, 0)]
    assert m.rows[:2] == [FULL * 60] * 2
    assert m.rows[2] == HOLE * 30 + FUTURE * 30
    name, kind = parse_path(f"c/q/{format_hour(NOW)}/{full_hour()[0]}")
    index.add(name, kind)
    assert local_maps(index, NOW, 24)[0].rows[2][0] == HOLE  # 2 s of minute 0 only
    assert index.has(name, Kind.SEGMENT)
