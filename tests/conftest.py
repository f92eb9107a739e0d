"""Fixtures: real agents on loopback (port 0), in this process's trio loop."""

from __future__ import annotations

import os
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from hypothesis import settings

# `make test` is reproducible: the same examples on every run and every machine, so a
# red CI run is a real regression. `--hypothesis-profile=explore` draws fresh random
# examples each run, to hunt for new counterexamples.
settings.register_profile("default", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile("default")

sys.path.insert(0, os.path.dirname(__file__))

from agent.config import build_config  # noqa: E402
from agent.node import Node  # noqa: E402
from agent.peers.peer_set import Peer  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run long fault-injection variants")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="long variant: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def peer_of(node: Node) -> Peer:
    """`node` as a peer of another, named by its node name."""
    return Peer.from_url(node.url, node.config.node_name)


def node_config(root: Path, **overrides):
    values = dict(root=root, listen="127.0.0.1:0", node_name=root.name,
                  backfill_interval=3600, recent_window=0, request_timeout=5.0)
    values.update(overrides)
    return build_config(values)


class Cluster:
    def __init__(self, nursery: trio.Nursery, base: Path) -> None:
        self.nursery = nursery
        self.base = base
        self.nodes: list[Node] = []
        self.overrides: list[dict] = []

    async def start_node(self, i: int | None = None, **overrides) -> Node:
        if i is None:
            i = len(self.nodes)
            self.nodes.append(None)  # type: ignore[arg-type]
            self.overrides.append(overrides)
        else:
            overrides = {**self.overrides[i], **overrides}
        root = self.base / f"node{i}"
        root.mkdir(exist_ok=True)
        node = Node(node_config(root, **overrides))
        await self.nursery.start(node.run)
        self.nodes[i] = node
        return node

    async def connect(self) -> None:
        """Make every running node a peer of every other (named by its node name)."""
        for node in self.nodes:
            if node is not None:
                await node.set_peers([peer_of(o) for o in self.nodes
                                      if o is not None and o is not node])

    async def stop_node(self, i: int) -> None:
        self.nodes[i].stop()
        await trio.sleep(0.05)

    def root(self, i: int) -> Path:
        return self.base / f"node{i}"


@asynccontextmanager
async def running_cluster(base: Path, n: int, connect: bool = True, **overrides):
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, base)
        for _ in range(n):
            await cluster.start_node(**overrides)
        if connect:
            await cluster.connect()
        try:
            yield cluster
        finally:
            for node in cluster.nodes:
                if node is not None:
                    node.stop()


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01):
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(interval)


@pytest.fixture
def cluster_factory(tmp_path):
    def factory(n: int, **kw):
        return running_cluster(tmp_path, n, **kw)
    return factory
