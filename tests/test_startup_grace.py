"""The start-up grace (protocol.backoff): a peer that is not up yet during the first
minute is worth an INFO line; one that stays down past the grace, or that was up and
went down, a WARNING. The clock is a parameter: the tests move time."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from conftest import peer_of, wait_until
from fault_helpers import refusing_peer_url
from protocol.backoff import STARTUP_GRACE, StartupGrace, down_is_expected


def test_the_decision():
    assert down_is_expected(joined=100.0, now=100.0, grace=60.0, answered=False)
    assert down_is_expected(joined=100.0, now=159.9, grace=60.0, answered=False)
    assert not down_is_expected(joined=100.0, now=160.0, grace=60.0, answered=False)
    assert not down_is_expected(joined=100.0, now=101.0, grace=60.0, answered=True)
    assert not down_is_expected(joined=100.0, now=100.0, grace=0.0, answered=False)


def test_tracker_follows_each_peer():
    g = StartupGrace()
    assert g.grace == STARTUP_GRACE == 60.0
    g.joined("a", 0.0)
    g.joined("b", 0.0)
    assert g.expected("a", 30.0) and g.expected("b", 30.0)
    g.answered("b")  # b came up, then went down: not "not up yet" any more
    assert not g.expected("b", 31.0)
    assert g.expected("a", 59.0)
    assert not g.expected("a", 61.0)  # still down past the grace
    g.joined("a", 61.0)  # joining again changes nothing
    assert not g.expected("a", 62.0)
    # a peer added later gets its own grace, from when it joined
    g.joined("c", 500.0)
    assert g.expected("c", 550.0) and not g.expected("c", 560.0)
    # one told about only when it fails counts as joined then
    assert g.expected("d", 1000.0) and g.expected("d", 1059.0)
    assert not g.expected("d", 1060.0)
    # a peer that left and comes back starts afresh
    g.forget("b")
    g.joined("b", 2000.0)
    assert g.expected("b", 2001.0)
    assert set(g.joined_at) == {"a", "b", "c", "d"}


@given(st.floats(0, 1e6), st.lists(st.floats(0, 1e4), min_size=1, max_size=20),
       st.floats(0, 600), st.booleans())
def test_once_a_warning_always_a_warning(joined, offsets, grace, answered):
    """Along a moving clock, failures are INFO first (if ever), then WARNING for good."""
    verdicts = [down_is_expected(joined, joined + dt, grace, answered)
                for dt in sorted(offsets)]
    assert verdicts == sorted(verdicts, reverse=True)
    if answered or grace == 0:
        assert not any(verdicts)


# ---- with a real agent ----

def backfill_failures(caplog, url: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "agent.pull.backfill" and r.getMessage().startswith("backfill from")
            and f"{url}: " in r.getMessage() and " failed: " in r.getMessage()]


async def test_a_peer_not_up_yet_is_info_at_start_up_and_a_warning_after(cluster_factory,
                                                                         caplog):
    """Two agents started together: the first round with the other one, not up yet,
    is an INFO line; once the grace is over (0 s here), the same failure is a WARNING;
    once the peer is up, rounds succeed."""
    caplog.set_level(logging.INFO, logger="agent")
    down = refusing_peer_url()
    async with cluster_factory(1, connect=False, peers=[down], backfill_interval=0.05) as c:
        a = c.nodes[0]
        failures = await wait_until(lambda: backfill_failures(caplog, down))
        assert failures[0].levelno == logging.INFO, failures[0].getMessage()
        assert "not up yet?" in failures[0].getMessage()
        # the grace runs on the agent's (trio's) clock: move it past the grace
        a.grace.joined_at[down] -= STARTUP_GRACE
        seen = len(backfill_failures(caplog, down))
        later = await wait_until(lambda: backfill_failures(caplog, down)[seen:])
        assert later[0].levelno == logging.WARNING, later[0].getMessage()


async def test_a_peer_that_was_up_and_went_down_is_a_warning_at_once(cluster_factory,
                                                                    caplog):
    caplog.set_level(logging.INFO, logger="agent")
    async with cluster_factory(2, backfill_interval=0.05) as c:
        a, b = c.nodes
        await wait_until(lambda: a.backfiller.state(peer_of(b)).round_ok)
        url = b.url
        await c.stop_node(1)
        failures = await wait_until(lambda: backfill_failures(caplog, url))
        assert failures[0].levelno == logging.WARNING, failures[0].getMessage()
        assert a.grace.expected(url, 0.0) is False  # it answered once: never "not up yet"
