"""The persistent index across real agent restarts: kill -9 in the middle of index
writes (in a loop, like tests/test_faults_crash.py), offline changes, SIGTERM.

After every start the agent's listings (wubloader's /files, which read the index)
must equal the disk: a crash leaves the index current or detectably stale, never
wrong. SEGSYNC_INDEX_CRASH_CYCLES sets the cycles; `--runslow` adds a long variant.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import shutil
import threading
import time

import httpx
import pytest

from fault_helpers import AgentProcess, env_int
from agent.archive.store import Store
from helpers import hours_ago, make_name, touch_tombstone, write_segment_file

DEFAULT_CYCLES = env_int("SEGSYNC_INDEX_CRASH_CYCLES", 10)
SEED = env_int("SEGSYNC_INDEX_CRASH_SEED", random.randrange(2**32))
QUALITIES = ("source", "480p")


def disk_listings(root) -> dict:
    """(channel, quality) -> hour -> replicable names, as the disk holds them."""
    store = Store(root)
    out: dict = {}
    for c, q, h, _ in store.scan():
        names = store.list_hour(c, q, h).replicable
        if names or store.list_hour(c, q, h).hidden:
            out.setdefault((c, q), {})[h] = sorted(names)
    return out


PAIRS = [("desertbus", q) for q in QUALITIES]


def all_names(root) -> dict:
    """Every indexed name (hidden segments too) by pair and hour, from the disk."""
    store = Store(root)
    out: dict = {}
    for c, q, h, _ in store.scan():
        lst = store.list_hour(c, q, h)
        names = sorted(lst.segments + lst.hidden + lst.tombstones)
        if names:
            out.setdefault((c, q), {})[h] = names
    return out


def saved_names(root) -> dict:
    """What ROOT/.segsync/index.sqlite3 holds, by hour."""
    import sqlite3
    from protocol.index.schema import decode_names
    conn = sqlite3.connect(root / ".segsync" / "index.sqlite3")
    try:
        return {(c, q, h): sorted(decode_names(blob)) for c, q, h, blob in
                conn.execute("SELECT channel, quality, hour, names FROM hour_names")}
    finally:
        conn.close()


def agent_listings(agent: AgentProcess, pairs) -> dict:
    out: dict = {}
    with httpx.Client(base_url=agent.url, timeout=10) as client:
        for c, q in pairs:
            hours = client.get(f"/files/{c}/{q}").json()
            for h in hours:
                names = client.get(f"/files/{c}/{q}/{h}", params={"tombstones": "true"}).json()
                out.setdefault((c, q), {})[h] = sorted(names)
    return out


def assert_listings_equal_disk(agent: AgentProcess, context: str) -> None:
    want = disk_listings(agent.root)
    pairs = sorted(set(want) | {("desertbus", q) for q in QUALITIES})
    got = {k: v for k, v in agent_listings(agent, pairs).items() if v}
    want = {k: v for k, v in want.items() if v}
    if got != want:
        diff = []
        for pair in sorted(set(got) | set(want)):
            for h in sorted(set(got.get(pair, {})) | set(want.get(pair, {}))):
                a, b = set(got.get(pair, {}).get(h, [])), set(want.get(pair, {}).get(h, []))
                if a != b:
                    diff.append(f"{pair} {h}: agent-only {sorted(a - b)[:2]} "
                                f"disk-only {sorted(b - a)[:2]}")
        raise AssertionError(f"{context}: listings differ from the disk: {diff[:5]}\n"
                             f"{agent.log_tail()}")


def eventually_equal(agent: AgentProcess, context: str, timeout: float = 20.0) -> None:
    """Changes made while the agent runs reach its index through the watcher."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return assert_listings_equal_disk(agent, context)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Changes:
    """Random changes of the kinds an archive sees: segments added to old hours,
    deleted, tombstoned, whole hour directories removed."""

    HOURS = range(3, 15)

    def __init__(self, rng: random.Random, root) -> None:
        self.rng = rng
        self.root = root
        self.n = 0
        self.hours: list[int] = list(self.HOURS)  # the hours (back from now) changed

    def one(self) -> None:
        rng, root = self.rng, self.root
        self.n += 1
        roll = rng.random()
        hour_back = rng.choice(self.hours)
        quality = rng.choice(QUALITIES)
        if roll < 0.55 or self.n < 5:
            data = f"seg-{self.n}-{rng.random()}".encode()
            start = hours_ago(hour_back) + dt.timedelta(milliseconds=self.n * 13 % 3_000_000)
            write_segment_file(root, make_name(data, start, quality=quality), data)
            return
        hour_dir = root / "desertbus" / quality / f"{hours_ago(hour_back):%Y-%m-%dT%H}"
        try:
            files = sorted(p for p in hour_dir.iterdir() if p.suffix == ".ts")
        except FileNotFoundError:
            return
        if not files:
            return
        if roll < 0.8:
            rng.choice(files).unlink(missing_ok=True)
        elif roll < 0.97:
            from protocol.names import parse_path
            name, _ = parse_path(str(rng.choice(files).relative_to(root)))
            touch_tombstone(root, name)
        else:
            shutil.rmtree(hour_dir, ignore_errors=True)


def keep_changing(changes: Changes, done: threading.Event) -> None:
    while not done.is_set():
        changes.one()
        time.sleep(changes.rng.uniform(0.0, 0.01))


def index_crash_loop(tmp_path, cycles: int) -> dict:
    rng = random.Random(SEED)
    print(f"index crash loop: seed {SEED} (replay with SEGSYNC_INDEX_CRASH_SEED={SEED}), "
          f"{cycles} cycles")
    agent = AgentProcess(tmp_path / "node", tmp_path / "run", backfill=False, push=False,
                         scrub=False, index_flush_interval=0.02)
    changes = Changes(rng, agent.root)
    for _ in range(300):
        changes.one()
    stats = {"cycles": 0, "warm_starts": 0, "changes": 0}
    try:
        for cycle in range(cycles):
            agent.start()
            assert_listings_equal_disk(agent, f"cycle {cycle}, after start")
            # a few hours change while it runs: the others keep rows saved in earlier
            # cycles (in the middle of other saves), which later starts trust
            changes.hours = rng.sample(list(Changes.HOURS), 3)
            done = threading.Event()
            writer = threading.Thread(target=keep_changing, args=(changes, done), daemon=True)
            writer.start()
            try:
                time.sleep(rng.uniform(0.05, 0.6))
                agent.kill()  # in the middle of the watcher's updates and index saves
            finally:
                done.set()
                writer.join()
            changes.hours = list(Changes.HOURS)
            for _ in range(rng.randrange(0, 20)):  # and some while it is down
                changes.one()
            stats["cycles"] += 1
        agent.start()
        assert_listings_equal_disk(agent, "last start")
        log = agent.log_path.read_text()
        stats["warm_starts"] = log.count("index: warm start")
        stats["hours_trusted"] = sum(int(n) for n in re.findall(r"(\d+) hours as saved", log))
        stats["hours_listed"] = sum(int(n) for n in re.findall(r"(\d+) listed", log))
        stats["changes"] = changes.n
        assert stats["warm_starts"] == cycles  # after the first: the index used, not rebuilt
        assert stats["hours_trusted"] > 0
        agent.stop()
        print(f"index crash loop: {stats}")
        return stats
    finally:
        agent.kill()


@pytest.mark.parametrize("cycles", [
    pytest.param(DEFAULT_CYCLES, id="default"),
    pytest.param(150, marks=pytest.mark.slow, id="long")])
def test_kill9_during_index_writes_then_listings_equal_the_disk(tmp_path, cycles):
    index_crash_loop(tmp_path, cycles)


def test_sigterm_saves_the_index_and_offline_changes_show_after_a_warm_start(tmp_path):
    agent = AgentProcess(tmp_path / "node", tmp_path / "run", backfill=False, push=False,
                         scrub=False, index_flush_interval=3600)
    changes = Changes(random.Random(7), agent.root)
    for _ in range(200):
        changes.one()
    try:
        agent.start()
        assert_listings_equal_disk(agent, "first start")
        # changes while it runs reach the index through the watcher, and are saved
        # at SIGTERM (no periodic save in an hour: only the shutdown save can have)
        for _ in range(50):
            changes.one()
        eventually_equal(agent, "after changes at run time")
        agent.stop()
        assert agent.proc.returncode == 0
        assert saved_names(agent.root) == {
            (c, q, h): names for (c, q), hours in all_names(agent.root).items()
            for h, names in hours.items()}
        log = agent.log_path.read_text()
        assert "index: full scan (no index yet) start" in log
        # offline: each kind of change
        for _ in range(60):
            changes.one()
        old = agent.root / "desertbus" / "source" / f"{hours_ago(40):%Y-%m-%dT%H}"
        write_segment_file(agent.root, make_name(b"offline", hours_ago(40)), b"offline")
        agent.start()
        assert_listings_equal_disk(agent, "warm start")
        assert agent.log_path.read_text().count("index: warm start") == 1
        assert old.exists()
        status = httpx.get(f"{agent.url}/v1/status", timeout=10)
        del status
    finally:
        agent.kill()


def test_segsync_dir_not_usable_runs_in_memory(tmp_path):
    agent = AgentProcess(tmp_path / "node", tmp_path / "run", backfill=False, push=False,
                         scrub=False)
    changes = Changes(random.Random(3), agent.root)
    for _ in range(50):
        changes.one()
    (agent.root / ".segsync").write_bytes(b"a file where the directory should be")
    try:
        agent.start()
        assert_listings_equal_disk(agent, "in-memory start")
        assert "running with an in-memory index" in agent.log_path.read_text()
        for _ in range(20):
            changes.one()
        eventually_equal(agent, "in memory, after changes")
    finally:
        agent.kill()
