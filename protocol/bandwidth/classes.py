"""Which class a transfer is in: live (goes first under a limit) or catch-up."""

from __future__ import annotations

import datetime as dt
import enum


class TransferClass(enum.Enum):
    LIVE = "live"
    CATCHUP = "catchup"


CLASSES = (TransferClass.LIVE, TransferClass.CATCHUP)  # in order of priority
DIRECTIONS = ("upload", "download")


def classify(start: dt.datetime | None, now: dt.datetime, live_window: float
             ) -> TransferClass:
    """Which class a transfer is in. `start`: the segment's start time, None for a
    tombstone (always live: it must hide its segment everywhere at once). A segment
    that started within `live_window` seconds of `now` (or after it: clocks differ) is
    live, whoever moves it (a push, a hole repair, a peer fetching it from us); an
    older one is catch-up."""
    if start is None:
        return TransferClass.LIVE
    age = (now - start).total_seconds()
    return TransferClass.LIVE if age <= live_window else TransferClass.CATCHUP
