"""Watcher loss: dropped events or an inotify overflow -> the rescan catches everything."""

from __future__ import annotations

import logging
import os

import trio

from agent.archive.watcher import INOTIFY_LOGGER
from conftest import wait_until
from helpers import hours_ago, make_name, replicable_state, touch_tombstone, write_segment_file


def _write(root, count: int, hours_back: float, tag: int) -> list:
    names = []
    for i in range(count):
        data = os.urandom(3000 + i)
        name = make_name(data, hours_ago(hours_back).replace(second=i % 60,
                                                             microsecond=tag * 1000 + i))
        write_segment_file(root, name, data)
        names.append(name)
    return names


def _rescans(node, reason: str) -> float:
    return node.metrics.watcher_rescans.labels(reason)._value.get()


async def _converged(c) -> None:
    await wait_until(lambda: replicable_state(c.root(1)) == replicable_state(c.root(0)),
                     timeout=20)


async def test_lost_events_then_overflow_signal(cluster_factory):
    async with cluster_factory(2) as c:
        a, b = c.nodes
        first = _write(c.root(0), 3, 2, 1)
        await wait_until(lambda: all((c.root(1) / n.path).exists() for n in first))
        bridge = a.watcher.bridge
        real_put = bridge.put
        bridge.put = lambda event: None  # the kernel dropped everything from here on
        lost = _write(c.root(0), 10, 1, 2)
        touch_tombstone(c.root(0), first[0])
        await trio.sleep(0.5)
        assert not any((c.root(1) / n.path).exists() for n in lost), "events were not lost"
        assert not (c.root(1) / first[0].tombstone_path).exists()
        bridge.put = real_put
        bridge.overflow()  # what the inotify overflow path calls
        await _converged(c)
        assert _rescans(a, "inotify_overflow") == 1


async def test_bridge_past_max_events(cluster_factory):
    async with cluster_factory(2) as c:
        a = c.nodes[0]
        a.watcher.bridge._max = 5
        # written without yielding to trio: the bridge fills up before anyone drains it
        names = _write(c.root(0), 40, 1, 3)
        await _converged(c)
        assert all((c.root(1) / n.path).exists() for n in names)
        assert _rescans(a, "overflow") >= 1


async def test_inotify_overflow_line_triggers_rescan_at_any_log_level(cluster_factory):
    """watchdog reports IN_Q_OVERFLOW only as a WARNING log line; an agent run with
    --log-level ERROR must still hear it."""
    root_logger = logging.getLogger()
    saved = root_logger.level
    async with cluster_factory(2) as c:
        a = c.nodes[0]
        bridge = a.watcher.bridge
        real_put = bridge.put
        bridge.put = lambda event: None
        lost = _write(c.root(0), 5, 1, 4)
        await trio.sleep(0.5)
        bridge.put = real_put
        assert not any((c.root(1) / n.path).exists() for n in lost), "events were not lost"
        root_logger.setLevel(logging.ERROR)
        try:
            await trio.to_thread.run_sync(
                logging.getLogger(INOTIFY_LOGGER).warning,
                "Inotify queue overflowed; filesystem events were lost")
            await wait_until(lambda: all((c.root(1) / n.path).exists() for n in lost),
                             timeout=10)
        finally:
            root_logger.setLevel(saved)
        assert _rescans(a, "inotify_overflow") == 1
        assert all((c.root(1) / n.path).read_bytes() == (c.root(0) / n.path).read_bytes()
                   for n in lost)


async def test_silent_loss_caught_by_periodic_rescan(cluster_factory):
    """No overflow signal at all: the periodic rescan still finds and pushes everything."""
    async with cluster_factory(2, rescan_interval=0.5) as c:
        c.nodes[0].watcher.bridge.put = lambda event: None
        names = _write(c.root(0), 8, 3, 5)
        await _converged(c)
        assert all((c.root(1) / n.path).exists() for n in names)
        assert _rescans(c.nodes[0], "periodic") >= 1
