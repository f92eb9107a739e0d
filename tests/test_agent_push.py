"""Three real agents on loopback: push replication and tombstones."""

import datetime as dt
import os

import httpx
import trio

from conftest import wait_until
from helpers import hours_ago, make_name, touch_tombstone, write_segment_file
from protocol.names import Kind


async def test_renamed_segment_reaches_every_peer(cluster_factory):
    async with cluster_factory(3) as c:
        data = os.urandom(200_000)
        name = make_name(data, hours_ago(0))
        write_segment_file(c.root(0), name, data)
        for i in (1, 2):
            await wait_until(lambda: (c.root(i) / name.path).exists())
            assert (c.root(i) / name.path).read_bytes() == data
        # no echo: the receivers did not push it back
        await trio.sleep(0.2)
        for node in c.nodes:
            assert all(p.depth() == 0 for p in node.pusher.peers.values())
