"""Per-peer jittered exponential backoff, driven by a clock the caller passes in."""

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
