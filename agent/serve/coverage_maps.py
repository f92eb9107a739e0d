"""Coverage maps of this node (from the in-memory index: no directory is read) and of
a peer (from its /v1 digests and listings, bounded), as protocol/coverage rows."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import trio

from protocol.coverage import (
    EMPTY,
    CoverageError,
    HourSpans,
    diff_row,
    hour_spans,
    map_window,
    pair_rows,
)
from protocol.names import format_hour, parse_hour

from ..archive.index import ArchiveIndex
from ..peers.client import PeerClient

MAX_PEER_LISTINGS = 1024   # listings fetched for one peer map, at most
PEER_LISTING_CONCURRENCY = 4


@dataclass
class PairMap:
    channel: str
    quality: str
    hours: list[str]
    rows: list[str]

    def as_json(self) -> dict:
        return {"channel": self.channel, "quality": self.quality, "hours": self.hours,
                "rows": self.rows}


@dataclass
class NodeSpans:
    """Spans by (channel, quality) and hour: a node's archive as far as maps need."""

    pairs: dict[tuple[str, str], dict[str, HourSpans]] = field(default_factory=dict)

    def hours(self, pair: tuple[str, str]) -> list[str]:
        return sorted(self.pairs.get(pair, {}))


def _window_with_previous(hours: list[str]) -> list[str]:
    """The map's hours and the one before (its spill-over reaches the first row)."""
    if not hours:
        return []
    return [format_hour(parse_hour(hours[0]) - dt.timedelta(hours=1))] + hours


def local_spans(index: ArchiveIndex, pair: tuple[str, str], hours: list[str]
                ) -> dict[str, HourSpans]:
    return {h: index.hour_spans(*pair, h) for h in _window_with_previous(hours)}


async def warm_spans(index: ArchiveIndex, now: dt.datetime, hours: int) -> None:
    """Compute, in a worker thread, the spans of the hours of a map (the last `hours`
    up to now, and the one before) not cached yet: the first
    map of a big archive parses every name (seconds of CPU for 336 hours x 3), and
    the event loop must go on serving meanwhile. A change while the thread runs
    voids that hour's result (it is parsed again when next needed)."""
    first, last = _window_bounds(now, hours)
    claims = [(key, entry, claim) for pair in index.pairs()
              for key, entry in index.keyed_entries(*pair, first, last)
              if (claim := entry.claim_spans()) is not None]
    if not claims:
        return
    load = index.loader  # a cold hour's names are read in the thread, not kept

    def compute() -> list[HourSpans]:
        return [hour_spans(names if names is not None else (load(key) or ()) if load else ())
                for key, _, (_, names) in claims]

    spans = await trio.to_thread.run_sync(compute)
    for (_, entry, (token, _)), result in zip(claims, spans, strict=True):
        entry.offer_spans(token, result)


def local_maps(index: ArchiveIndex, now: dt.datetime, hours: int,
               cell_seconds: int = 60) -> list[PairMap]:
    """Every (channel, quality) of this node over the last `hours` hours."""
    out = []
    for pair in index.pairs():
        window = map_window(index.hours(*pair), now, hours)
        if window:
            rows = pair_rows(local_spans(index, pair, window), window, cell_seconds, now)
            out.append(PairMap(*pair, window, rows))
    return out


async def peer_spans(client: PeerClient, index: ArchiveIndex, first: str, last: str
                     ) -> NodeSpans:
    """A peer's spans for hours first..last: its hour digests, then the listings of
    only the hours whose digest differs from ours (an hour in sync is our own
    spans). At most MAX_PEER_LISTINGS listings; more is a CoverageError."""
    out = NodeSpans()
    wanted: list[tuple[tuple[str, str], str]] = []
    for channel, quality, _ in (await client.pair_digests(first, last)).pairs:
        pair = (channel, quality)
        theirs = (await client.hour_digests(channel, quality, first, last)).hours
        ours = dict(index.hour_digests(channel, quality, first, last))
        spans = out.pairs.setdefault(pair, {})
        for hour, digest in theirs:
            if ours.get(hour) == digest:
                spans[hour] = index.hour_spans(channel, quality, hour)
            else:
                wanted.append((pair, hour))
    if len(wanted) > MAX_PEER_LISTINGS:
        raise CoverageError(f"{len(wanted)} hours differ from {client.url}; at most "
                            f"{MAX_PEER_LISTINGS} listings are fetched for one map: "
                            "ask for fewer hours")
    slots = trio.Semaphore(PEER_LISTING_CONCURRENCY)

    async def fetch(pair: tuple[str, str], hour: str) -> None:
        async with slots:
            listing = await client.listing(*pair, hour)
        out.pairs[pair][hour] = hour_spans(listing.names)

    async with trio.open_nursery() as nursery:
        for pair, hour in wanted:
            nursery.start_soon(fetch, pair, hour)
    return out


def _window_bounds(now: dt.datetime, hours: int) -> tuple[str, str]:
    last = parse_hour(format_hour(now))
    return format_hour(last - dt.timedelta(hours=hours)), format_hour(last)


async def peer_maps(client: PeerClient, index: ArchiveIndex, now: dt.datetime, hours: int,
                    diff: bool, cell_seconds: int = 60) -> list[PairMap]:
    """The peer's maps, or (`diff`) cell by cell this node against the peer:
    A = this node holds more there, B = the peer does."""
    first, last = _window_bounds(now, hours)
    map_window([], now, hours)  # validates `hours` before any request goes out
    theirs = await peer_spans(client, index, first, last)
    pairs = sorted(set(theirs.pairs) | (set(index.pairs()) if diff else set()))
    out = []
    for pair in pairs:
        held = theirs.hours(pair) + (index.hours(*pair) if diff else [])
        window = map_window(held, now, hours)
        if not window:
            continue
        their_spans = {h: theirs.pairs.get(pair, {}).get(h, EMPTY)
                       for h in _window_with_previous(window)}
        rows = pair_rows(their_spans, window, cell_seconds, now)
        if diff:
            ours = pair_rows(local_spans(index, pair, window), window, cell_seconds, now)
            rows = [diff_row(a, b) for a, b in zip(ours, rows, strict=True)]
        out.append(PairMap(*pair, window, rows))
    return out
