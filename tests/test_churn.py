"""Churn: five agents, a randomized run of writes (renames and slow in-place writes),
tombstones and agent restarts; at the end every node holds exactly the same
replicable set, byte-identical and hash-valid, and no tombstoned segment is listed
anywhere. The seed is printed; SEGSYNC_CHURN_SEED replays a run, SEGSYNC_CHURN_STEPS
sets its length (default 80; --runslow adds a 400-step run).
"""

from __future__ import annotations

import datetime as dt
import random

import httpx
import pytest
import trio

from conftest import peer_of, wait_until
from fault_helpers import audit_archive, env_int
from helpers import hours_ago, make_name, replicable_state, touch_tombstone, write_segment_file
from protocol.names import parse_path

STEPS = env_int("SEGSYNC_CHURN_STEPS", 80)
NODES = 5


async def slow_in_place_write(path, data: bytes, rng: random.Random) -> None:
    """A downloader writing the final name directly, chunk by chunk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for i in range(0, len(data), 20_000):
            f.write(data[i:i + 20_000])
            f.flush()
            await trio.sleep(rng.uniform(0.0, 0.03))


async def connect_running(c, down: set[int]) -> None:
    """Every running node a peer of every other (a restarted node has a new port)."""
    up = [n for i, n in enumerate(c.nodes) if i not in down]
    for node in up:
        await node.set_peers([peer_of(o) for o in up if o is not node])


async def churn(c, rng: random.Random, steps: int) -> dict:
    written: list = []
    stats = {"renamed": 0, "in_place": 0, "tombstones": 0, "restarts": 0,
             "written_while_down": 0}
    down: set[int] = set()
    base = hours_ago(6)
    async with trio.open_nursery() as writers:
        for step in range(steps):
            action = rng.choices(["rename", "in_place", "tombstone", "stop", "start"],
                                 weights=[10, 3, 2, 1, 1])[0]
            i = rng.randrange(NODES)
            if action in ("rename", "in_place"):
                data = rng.randbytes(rng.randrange(1_000, 120_000))
                start = base + dt.timedelta(minutes=rng.randrange(0, 300),
                                            microseconds=step)
                name = make_name(data, start, quality=rng.choice(["source", "480p"]),
                                 type_=rng.choice(["full", "full", "suspect", "partial"]))
                written.append(name)
                stats["written_while_down"] += i in down
                if action == "rename":
                    write_segment_file(c.root(i), name, data)
                    stats["renamed"] += 1
                else:
                    writers.start_soon(slow_in_place_write, c.root(i) / name.path, data,
                                       random.Random(rng.random()))
                    stats["in_place"] += 1
            elif action == "tombstone" and written:
                touch_tombstone(c.root(i), rng.choice(written))
                stats["tombstones"] += 1
            elif action == "stop" and i not in down and len(down) < 2:
                await c.stop_node(i)  # its peers keep its URL: their pushes now fail
                down.add(i)
            elif action == "start" and down:
                j = rng.choice(sorted(down))
                await c.start_node(j)
                down.discard(j)
                await connect_running(c, down)
                stats["restarts"] += 1
            await trio.sleep(rng.uniform(0.0, 0.05))
    for j in sorted(down):
        await c.start_node(j)
        stats["restarts"] += 1
    await c.connect()
    stats["segments"] = len(written)
    return stats


def tombstoned_listed(c) -> list[str]:
    """Segments listed by any node's index although a tombstone for them exists."""
    tombstones = set()
    for i in range(NODES):
        tombstones.update(p for p, v in replicable_state(c.root(i)).items() if v is None)
    bad = []
    for node in c.nodes:
        for channel, quality in node.index.pairs():
            for hour in node.index.hours(channel, quality):
                for f in node.index.replicable(channel, quality, hour):
                    name, _ = parse_path(f"{channel}/{quality}/{hour}/{f}")
                    if f.endswith(".ts") and name.tombstone_path in tombstones:
                        bad.append(f"{node.config.node_name}: {name.path}")
    return bad


@pytest.mark.parametrize("steps", [STEPS, pytest.param(400, marks=pytest.mark.slow)])
async def test_churn_converges(cluster_factory, steps):
    seed = env_int("SEGSYNC_CHURN_SEED", random.randrange(2**32))
    print(f"churn seed {seed} (replay: SEGSYNC_CHURN_SEED={seed}), {steps} steps")
    rng = random.Random(seed)
    async with cluster_factory(NODES, backfill_interval=0.5, backoff_cap=0.5,
                               request_timeout=3.0) as c:
        stats = await churn(c, rng, steps)

        def converged() -> bool:
            states = [replicable_state(c.root(i)) for i in range(NODES)]
            return all(s == states[0] for s in states[1:])

        await wait_until(converged, timeout=90, interval=0.2)
        # indexes catch up with the disk (tombstones pulled, slow writes finished)
        await wait_until(lambda: tombstoned_listed(c) == [], timeout=30, interval=0.2)
        state = replicable_state(c.root(0))
        for i in range(NODES):
            audit = audit_archive(c.root(i))
            assert audit.bad == [], audit.bad
            assert audit.temps == [], audit.temps
        # what each agent serves is what is on disk: same listing, no tombstoned segment
        async with httpx.AsyncClient() as http:
            for node in c.nodes:
                for path in state:
                    name, _ = parse_path(path)
                    url = f"{node.url}/files/{name.channel}/{name.quality}/{name.hour}"
                    listed = set((await http.get(url, params={"tombstones": "true"})).json())
                    want = {p.rsplit("/", 1)[1] for p in state
                            if p.startswith(f"{name.channel}/{name.quality}/{name.hour}/")}
                    assert listed == want, (node.config.node_name, url)
        hidden = sum(1 for v in state.values() if v is None)
        print(f"churn: {stats}; converged on {len(state) - hidden} segments "
              f"and {hidden} tombstones")
        assert len(state) > 0
