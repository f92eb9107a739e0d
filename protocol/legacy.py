"""Pure decisions for legacy peers: wubloader nodes that serve only its read API.

A wubloader restreamer answers `GET /files` (channels), `/files/CHANNEL` (qualities),
`/files/CHANNEL/QUALITY` (hours) and `/files/CHANNEL/QUALITY/HOUR?tombstones=true`
(file names) with JSON lists (sent as text/html), and serves the bytes under
`/segments/...`. It has no digests, so it is pulled from by listing every hour in
range, like wubloader's own backfiller; it is never pushed to.
"""

from __future__ import annotations

import json
from typing import Iterable

from .errors import ProtocolError, SegmentNameError
from .names import parse_hour, validate_component

MAX_LIST_BYTES = 4 * 1024 * 1024  # one JSON listing (an hour of 2 s segments is ~180 KiB)
MAX_LIST_ITEMS = 50_000
MAX_ITEM_CHARS = 1024
# qualities that are not video segments (wubloader's chat archive): never pulled
NON_SEGMENT_QUALITIES = frozenset({"chat"})


def decode_name_list(data: bytes) -> list[str]:
    """A legacy listing reply -> its names. Anything but a bounded JSON list of
    strings (an HTML error page, garbage, a map) is a ProtocolError."""
    if len(data) > MAX_LIST_BYTES:
        raise ProtocolError(f"listing larger than {MAX_LIST_BYTES} bytes")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        start = bytes(data[:40]).decode("utf-8", "replace")
        raise ProtocolError(f"listing is not JSON (starts {start!r})") from None
    if not isinstance(value, list):
        raise ProtocolError(f"listing is a JSON {type(value).__name__}, not a list")
    if len(value) > MAX_LIST_ITEMS:
        raise ProtocolError(f"listing has more than {MAX_LIST_ITEMS} names")
    for item in value:
        if not isinstance(item, str) or len(item) > MAX_ITEM_CHARS:
            raise ProtocolError("listing holds something that is not a short string")
    return value


def valid_components(names: Iterable[str], skip: frozenset[str] = frozenset()) -> list[str]:
    """Channel or quality names we can hold (wubloader lists every non-hidden
    directory entry, files and odd names included), sorted, minus `skip`."""
    out = set()
    for name in names:
        try:
            out.add(validate_component(name, "name"))
        except SegmentNameError:
            continue
    return sorted(out - skip)


def hours_to_list(remote_hours: Iterable[str], first: str, last: str) -> list[str]:
    """The peer's hour directories within [first, last], newest first; entries that
    are not hours are ignored."""
    out = set()
    for hour in remote_hours:
        try:
            parse_hour(hour)
        except SegmentNameError:
            continue
        if first <= hour <= last:
            out.add(hour)
    return sorted(out, reverse=True)
