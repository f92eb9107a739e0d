"""kill -9 of an agent in the middle of a scrub pass: the restarted agent resumes the
pass where its saved resume point says, re-hashing exactly the segments after it."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agent.archive.scrub import STATE_DIR, STATE_FILE
from fault_helpers import AgentProcess
from helpers import hours_ago, write_segments
from protocol.scrub import ScrubState, ScrubStateError, decode_state
from test_scrub import empty

SEGMENTS = 40
SIZE = 60_000


def read_state(root) -> ScrubState | None:
    try:
        return decode_state((root / STATE_DIR / STATE_FILE).read_bytes())
    except (FileNotFoundError, ScrubStateError):
        return None


def wait_state(agent: AgentProcess, predicate, timeout: float = 60.0) -> ScrubState:
    deadline = time.monotonic() + timeout
    while True:
        state = read_state(agent.root)
        if state is not None and predicate(state):
            return state
        assert agent.alive(), agent.log_tail()
        assert time.monotonic() < deadline, f"state {state}\n{agent.log_tail()}"
        time.sleep(0.05)


def scraped(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {s.name + (f"{{{s.labels['reason']}}}" if "reason" in s.labels else ""): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_kill9_mid_scrub_resumes_where_it_stopped(tmp_path):
    root = tmp_path / "node"
    start = hours_ago(3).replace(minute=0, second=0, microsecond=0)
    names = write_segments(root, SEGMENTS, start, size=SIZE)  # one hour, in order
    empty(root / names[-1].path)  # the newest rotted: the resumed part must find it
    order = sorted(names, key=lambda n: (n.hour, n.filename))  # the pass's order
    agent = AgentProcess(root, tmp_path / "run", scrub_rate=0.5, scrub_start_delay=0,
                         backfill=False)
    try:
        agent.start()
        # a checkpoint a few segments into the pass (one a second), then a power cut
        before = wait_state(agent, lambda s: s.in_progress and s.cursor is not None
                            and order.index(_name(s, order)) >= 3)
        agent.kill()
        stopped = read_state(root)
        assert stopped is not None and stopped.in_progress, "the pass ended before the kill"
        assert stopped.pass_started == before.pass_started
        done_upto = order.index(_name(stopped, order))
        assert done_upto < SEGMENTS - 1

        agent.start()
        finished = wait_state(agent, lambda s: s.last_full_pass is not None)
        assert not finished.in_progress
        rest = order[done_upto + 1:]
        sizes = [(root / n.path).stat().st_size if n != names[-1] else 0 for n in rest]
        metrics = scraped(agent.url)
        # exactly the segments after the resume point were re-hashed, once
        assert metrics["segsync_scrub_files_total"] == len(rest)
        assert metrics["segsync_scrub_bytes_total"] == sum(sizes)
        assert metrics["segsync_scrub_rotten_total{empty}"] == 1
        assert metrics["segsync_scrub_lost_total"] == 1
        assert (root / ".quarantine" / names[-1].path).exists()
    finally:
        agent.kill()


def _name(state: ScrubState, order):
    hour, channel, quality, filename = state.cursor
    (match,) = [n for n in order if n.filename == filename and n.hour == hour]
    return match
