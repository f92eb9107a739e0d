"""Pull from a wubloader node by listing comparison.

A wubloader node has no digests: each round lists its channels, their qualities and
hours, and every hour in range (newest first), like wubloader's backfiller. Each
(channel, quality) is a unit of work of the backfiller's own kind: the plan comes
from `protocol.replication.plan_hour`, as for a segsync peer; tombstones go through the backfiller's
tombstone path and downloads through `agent.pull.downloads` (hash-verified, atomic).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Awaitable, Callable

from protocol.legacy import (
    NON_SEGMENT_QUALITIES,
    hours_to_list,
    valid_components,
)
from protocol.replication import FetchPlan, plan_hour

from ..archive.index import ArchiveIndex
from ..peers.legacy_client import LegacyClient

if TYPE_CHECKING:
    from .downloads import PeerFetch

StoreTombstones = Callable[["PeerFetch", FetchPlan], Awaitable[None]]


class LegacyPuller:
    def __init__(self, index: ArchiveIndex, store_tombstones: StoreTombstones,
                 recent_window: float) -> None:
        self.index = index
        self.store_tombstones = store_tombstones
        self.recent_window = recent_window

    async def pairs(self, client: LegacyClient) -> list[tuple[str, str]]:
        """Every (channel, quality) the node holds; names we cannot hold are ignored,
        and so is wubloader's chat archive (not video segments)."""
        out = []
        for channel in valid_components(await client.channels()):
            for quality in valid_components(await client.qualities(channel),
                                            skip=NON_SEGMENT_QUALITIES):
                out.append((channel, quality))
        return out

    async def compare_pair(self, fetch: "PeerFetch", pair: tuple[str, str],
                           hours: tuple[str, str], now: dt.datetime) -> list[FetchPlan]:
        """List each hour in range, newest first; take its tombstones, plan its fetches."""
        client, stats = fetch.client, fetch.stats
        channel, quality = pair
        listed = hours_to_list(await client.hours(channel, quality), *hours)
        stats.hours_compared = len(listed)
        plans = []
        for hour in listed:
            names = await client.hour_listing(channel, quality, hour)
            stats.hours_listed += 1
            plan = plan_hour(channel, quality, hour, names,
                             self.index.names(channel, quality, hour), now, self.recent_window)
            stats.add_plan(plan)
            await self.store_tombstones(fetch, plan)
            if plan.fetch:
                plans.append(plan)
        return plans
