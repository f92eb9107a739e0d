"""kill -9 of a receiving agent in the middle of pushes and of a backfill, in a loop.

After every kill: no file under a final name is incomplete or fails its hash. After
every restart: the temp files the crash left are gone. At the end: the receiver holds
exactly what the sender holds. SEGSYNC_CRASH_CYCLES sets the cycles of the default
variant; `--runslow` adds a 200-cycle variant of each.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time

import pytest
import trustme

from fault_helpers import AgentProcess, audit_archive, env_int
from agent.archive.store import Store
from helpers import free_port, hours_ago, make_name, write_segment_file
from tls_helpers import issue

DEFAULT_CYCLES = env_int("SEGSYNC_CRASH_CYCLES", 12)
SEED = env_int("SEGSYNC_CRASH_SEED", random.randrange(2**32))


def add_segments(rng: random.Random, root, count: int, hours_back: float, counter: list[int],
                 max_size: int = 1_500_000):
    """Segments of 50 KB - max_size, each at a distinct start time."""
    for _ in range(count):
        counter[0] += 1
        data = rng.randbytes(rng.randrange(50_000, max_size))
        start = hours_ago(hours_back) + dt.timedelta(milliseconds=counter[0] * 7)  # in the past
        write_segment_file(root, make_name(data, start), data)


def keep_writing(rng: random.Random, root, counter: list[int], done: threading.Event) -> None:
    while not done.is_set():
        add_segments(rng, root, 1, 1 + counter[0] % 3, counter, max_size=600_000)
        time.sleep(rng.uniform(0.0, 0.06))


def replicable_names(root) -> set[str]:
    """The replicable listing; with audit_archive's hash check, equal names mean equal bytes."""
    store = Store(root)
    out = set()
    for channel, quality, hour, _ in store.scan():
        out.update(f"{channel}/{quality}/{hour}/{f}"
                   for f in store.list_hour(channel, quality, hour).replicable)
    return out


def wait_converged(receiver: AgentProcess, sender_root, timeout: float = 60.0) -> set:
    want = replicable_names(sender_root)
    deadline = time.monotonic() + timeout
    while True:
        got = replicable_names(receiver.root)
        if got == want:
            return got
        assert receiver.alive(), receiver.log_tail()
        if time.monotonic() > deadline:
            missing = sorted(set(want) - set(got))[:5]
            raise AssertionError(f"not converged: {len(want) - len(got)} missing, e.g. "
                                 f"{missing}\n{receiver.log_tail()}")
        time.sleep(0.1)


def tls_settings(ca, tmp_path, name: str) -> dict:
    """An agent's TLS settings from `ca` (none without one)."""
    return issue(ca, tmp_path / "tls", name).settings() if ca else {}


def crash_loop(tmp_path, cycles: int, mode: str, tls: bool = False) -> dict:
    rng = random.Random(SEED)
    print(f"crash loop ({mode}{', tls' if tls else ''}): seed {SEED} "
          f"(replay with SEGSYNC_CRASH_SEED={SEED}), {cycles} cycles")
    receiver_port = free_port()
    receiver_url = f"{'https' if tls else 'http'}://127.0.0.1:{receiver_port}"
    ca = trustme.CA() if tls else None
    sender = AgentProcess(tmp_path / "sender", tmp_path / "run",
                          peers=[receiver_url] if mode == "push" else [],
                          backfill=False, **tls_settings(ca, tmp_path, "sender"))
    receiver = AgentProcess(tmp_path / "receiver", tmp_path / "run", peers=[sender.url],
                            port=receiver_port, max_concurrency=4,
                            **tls_settings(ca, tmp_path, "receiver"))
    counter = [0]
    done = threading.Event()
    writer = None
    stats = {"cycles": 0, "kills_with_temp_files": 0, "temp_files_cleaned": 0,
             "segments_checked": 0}
    try:
        if mode == "backfill":
            add_segments(rng, sender.root, 10, 5, counter)
        sender.start()
        receiver.start()
        if mode == "push":  # a downloader writing into the sender all along: pushes in flight
            writer = threading.Thread(target=keep_writing, daemon=True,
                                      args=(random.Random(rng.random()), sender.root, counter,
                                            done))
            writer.start()
        for cycle in range(cycles):
            time.sleep(rng.uniform(0.0, 0.25))
            receiver.kill()
            audit = audit_archive(receiver.root)
            assert audit.bad == [], f"cycle {cycle}: incomplete under a final name: {audit.bad}"
            stats["segments_checked"] += audit.segments
            stats["kills_with_temp_files"] += bool(audit.temps)
            if mode == "backfill":  # gained while the receiver is down: pulled at its start
                add_segments(rng, sender.root, rng.randrange(3, 8), 1 + cycle % 3, counter)
            receiver.start()
            # the start-up rescan (done before /healthz answers) removed the crash's leftovers
            left = [t for t in audit.temps if (receiver.root / t).exists()]
            assert left == [], f"cycle {cycle}: temp files survived a restart: {left}"
            stats["temp_files_cleaned"] += len(audit.temps)
            stats["cycles"] += 1
        done.set()
        if writer is not None:
            writer.join()
        final = wait_converged(receiver, sender.root)
        audit = audit_archive(receiver.root)
        assert audit.bad == [] and audit.temps == []
        assert len(final) == counter[0]  # every segment ever written arrived: nothing lost
        stats["segments"] = counter[0]
        print(f"crash loop ({mode}): {stats}")
        return stats
    finally:
        done.set()
        receiver.kill()
        sender.kill()


# over TLS too: a kill in the middle of a handshake or of an encrypted upload
CYCLES = [pytest.param(DEFAULT_CYCLES, False, id="http"),
          pytest.param(max(4, DEFAULT_CYCLES // 2), True, id="tls"),
          pytest.param(200, False, marks=pytest.mark.slow, id="http-long")]


@pytest.mark.parametrize("cycles, tls", CYCLES)
def test_kill9_receiver_during_pushes(tmp_path, cycles, tls):
    stats = crash_loop(tmp_path, cycles, "push", tls)
    assert stats["cycles"] == cycles


@pytest.mark.parametrize("cycles, tls", CYCLES)
def test_kill9_receiver_during_backfill(tmp_path, cycles, tls):
    stats = crash_loop(tmp_path, cycles, "backfill", tls)
    assert stats["cycles"] == cycles
