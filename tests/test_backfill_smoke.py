import os

from helpers import hours_ago, make_name, replicable_state, touch_tombstone, write_segment_file


async def test_backfill_round_copies_missing(cluster_factory):
    async with cluster_factory(2, connect=False) as c:
        a, b = c.nodes
        names = []
        for i in range(5):
            data = os.urandom(1000 + i)
            name = make_name(data, hours_ago(3 + i))
            write_segment_file(c.root(0), name, data)
            names.append(name)
        touch_tombstone(c.root(0), names[0])
        await a.local_files.rescan(announce_new=False)
        results = await b.backfiller.round_all([a.url])
        assert results[0].ok, results[0].error
        assert replicable_state(c.root(1)) == replicable_state(c.root(0))
        again = await b.backfiller.round_all([a.url])
        assert again[0].pairs == {}
