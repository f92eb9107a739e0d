"""A failing peer, in time: per-peer jittered exponential backoff, and the start-up
grace before a peer that is not up yet is worth a warning. Driven by a clock the
caller passes in."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def backoff_delay(
    failures: int, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Delay after `failures` consecutive failures: full jitter over base * 2**(n-1), capped."""
    if failures <= 0:
        return 0.0
    ceiling = min(cap, base * (2 ** min(failures - 1, 30)))
    r = (rng or random).random()
    # keep at least half the ceiling so a dead peer is not hammered by lucky draws
    return ceiling * (0.5 + 0.5 * r)


@dataclass
class Backoff:
    """Failure state of one peer: when it may be tried again."""

    base: float = 0.05
    cap: float = 30.0
    failures: int = 0
    not_before: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def ready(self, now: float) -> bool:
        return now >= self.not_before

    def wait_time(self, now: float) -> float:
        return max(0.0, self.not_before - now)

    def failure(self, now: float) -> float:
        self.failures += 1
        delay = backoff_delay(self.failures, self.base, self.cap, self.rng)
        self.not_before = now + delay
        return delay

    def success(self) -> None:
        self.failures = 0
        self.not_before = 0.0


def jittered(interval: float, fraction: float, rng: random.Random | None = None) -> float:
    """An interval spread by +/- fraction so peers' rounds do not synchronise."""
    r = (rng or random).random()
    return max(0.0, interval * (1 - fraction + 2 * fraction * r))


STARTUP_GRACE = 60.0  # seconds: agents of a cluster are often started together


def down_is_expected(joined: float, now: float, grace: float, answered: bool) -> bool:
    """Whether a peer that cannot be reached is still just "not up yet": it has never
    answered since it joined (this agent's start, or its addition to the peer list)
    at time `joined`, and less than `grace` seconds have passed since. Such a failure
    is worth an INFO line; any other (past the grace, or a peer that was up) a WARNING."""
    return not answered and now - joined < grace


@dataclass
class StartupGrace:
    """`down_is_expected` for every peer: when each joined, which have answered.
    Holds one entry per peer it was told about; `forget` drops a peer that left."""

    grace: float = STARTUP_GRACE
    joined_at: dict[str, float] = field(default_factory=dict)
    answered_once: set[str] = field(default_factory=set)

    def joined(self, peer: str, now: float) -> None:
        """The peer is in the peer list from `now` on (a second call changes nothing)."""
        self.joined_at.setdefault(peer, now)

    def answered(self, peer: str) -> None:
        self.answered_once.add(peer)

    def forget(self, peer: str) -> None:
        self.joined_at.pop(peer, None)
        self.answered_once.discard(peer)

    def expected(self, peer: str, now: float) -> bool:
        """Is a failure to reach `peer` at `now` expected (INFO)? A peer never told
        about counts as joined now."""
        return down_is_expected(self.joined_at.setdefault(peer, now), now, self.grace,
                                peer in self.answered_once)
