"""A token bucket over bytes with a small burst, driven by the `now` it is given."""

from __future__ import annotations

BURST_SECONDS = 0.05  # the bucket holds 50 ms worth of the rate...
MIN_BURST = 64 * 1024  # ...and never less than one 64 KiB piece
# float rounding must never leave a request a hair short for ever: `take` accepts a
# shortfall of twice this share of the burst (carried as debt), `ready_at` aims at once
SLACK = 1e-7


def burst_for(rate: float) -> float:
    """The bucket's size at `rate` bytes/s: small, so a limit holds over short spans."""
    return max(float(MIN_BURST), rate * BURST_SECONDS)


class TokenBucket:
    """Bytes that may be sent now: filled at `rate` bytes/s up to `burst`. Starts full."""

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst_for(rate) if burst is None else burst
        self.tokens = self.burst
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, nbytes: float, now: float) -> bool:
        """Take `nbytes` (at most `burst`) if the bucket holds them; False: wait."""
        self.refill(now)
        if self.tokens >= nbytes - 2 * SLACK * self.burst:
            self.tokens -= nbytes
            return True
        return False

    def ready_at(self, nbytes: float, now: float) -> float:
        """When the bucket will hold `nbytes` (at most `burst`): `now` if it does."""
        self.refill(now)
        missing = nbytes - SLACK * self.burst - self.tokens
        return now if missing <= 0 else now + missing / self.rate

    def set_rate(self, rate: float, now: float) -> None:
        """A new rate from now on; what the bucket holds shrinks to the new burst."""
        self.refill(now)
        self.rate = rate
        self.burst = burst_for(rate)
        self.tokens = min(self.tokens, self.burst)
