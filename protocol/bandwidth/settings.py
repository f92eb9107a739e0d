"""The limits as an operator gives them (MB/s, 0: none) and the live window, checked."""

from __future__ import annotations

import math
from typing import Any

MB = 1_000_000  # the limits are given in MB/s: 10^6 bytes per second
MIN_LIMIT_MB = 0.05  # below this a transfer could not meet peers' slowest-rate deadline
MAX_LIMIT_MB = 100_000.0  # 100 GB/s: anything above is a typo
DEFAULT_LIVE_WINDOW = 600.0  # seconds: a segment younger than this is live traffic


class RateError(ValueError):
    """A rate setting that cannot be used, saying why."""


def parse_rate(value: Any, what: str) -> float | None:
    """A limit in MB/s (a TOML or flag value) as bytes per second; 0 or None: no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RateError(f"{what} must be a number of MB/s (0: no limit)")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise RateError(f"{what} must be >= 0 MB/s (0: no limit)")
    if value == 0:
        return None
    if value < MIN_LIMIT_MB:
        raise RateError(f"{what} must be at least {MIN_LIMIT_MB} MB/s (or 0: no limit): "
                        "slower transfers would run past peers' deadlines")
    if value > MAX_LIMIT_MB:
        raise RateError(f"{what} must be at most {MAX_LIMIT_MB:.0f} MB/s")
    return value * MB


def parse_live_window(value: Any, what: str = "live-window") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or math.isnan(value) or not 0 <= value <= 7 * 86400:
        raise RateError(f"{what} must be a number of seconds from 0 to 604800")
    return float(value)


def describe_rate(rate: float | None) -> str:
    """'20 MB/s', 'no limit'."""
    return "no limit" if rate is None else f"{rate / MB:g} MB/s"
