"""Bandwidth limits, sans-I/O: the rate settings (`settings`), which class a transfer
is in (`classes`), the token bucket (`bucket`) and the scheduler that shares one
direction's limit (upload or download) between transfers (`scheduler`).

A node has at most one limit per direction, for every peer and every kind of transfer.
Under a limit, live traffic (tombstones, segments that started within the live window:
pushes, hole repairs) goes before catch-up traffic (backfill of older hours, serving
them): catch-up gets only what live traffic leaves. Within a class, peers share fairly
(by bytes granted, so a peer with many transfers in flight does not crowd out one with
few). The limit is a token bucket with a small burst (`BURST_SECONDS` of the rate):
over any span of time a limited direction moves at most `rate * span + burst` bytes.

Nothing here reads a clock: every call takes `now` (seconds, any monotonic origin).
"""

from .bucket import BURST_SECONDS, MIN_BURST, TokenBucket, burst_for
from .classes import CLASSES, DIRECTIONS, TransferClass, classify
from .scheduler import RATE_WINDOW, ClassCounters, RateMeter, Request, Scheduler
from .settings import (
    DEFAULT_LIVE_WINDOW,
    MAX_LIMIT_MB,
    MB,
    MIN_LIMIT_MB,
    RateError,
    describe_rate,
    parse_live_window,
    parse_rate,
)

__all__ = [
    "BURST_SECONDS", "CLASSES", "DEFAULT_LIVE_WINDOW", "DIRECTIONS", "MAX_LIMIT_MB", "MB",
    "MIN_BURST", "MIN_LIMIT_MB", "RATE_WINDOW", "ClassCounters", "RateError", "RateMeter",
    "Request", "Scheduler", "TokenBucket", "TransferClass", "burst_for", "classify",
    "describe_rate", "parse_live_window", "parse_rate",
]
