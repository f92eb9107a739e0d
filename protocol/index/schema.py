"""The persistent index's file format: schema version and the encoding of a row.

One row per (channel, quality, hour) directory, and its names in a table of their
own (a warm start reads every row but no name). The names are one blob (sorted,
newline-separated UTF-8): a row a name would make a 2M-segment index five times
bigger and its cold start minutes long. Not compressed: zlib, even at level 1, cost
a full scan more time (~1 us a name) than the rest of writing the index. An index
whose version is not `SCHEMA_VERSION` (older, newer, or not ours) is never read: it
is rebuilt from a full scan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from ..coverage import HourSpans
from ..names import SEGMENT_SUFFIX, TOMBSTONE_SUFFIX, tombstone_filename_for

# 1: names blobs were zlib-compressed; 2: the names blob was the hour row's last column
SCHEMA_VERSION = 3
APPLICATION_ID = 0x53454753  # "SEGS": SQLite's application_id, marks the file as ours

MAX_NAMES_BLOB = 64 * 1024 * 1024  # bytes of one hour's names, at most


class IndexFormatError(ValueError):
    """A stored row that cannot be ours: the index is rebuilt."""


def index_usable(application_id: int, user_version: int) -> str | None:
    """None when a file with these header fields may be read; else why not."""
    if application_id == 0 and user_version == 0:
        return "empty or new"
    if application_id != APPLICATION_ID:
        return f"not a segsync index (application_id {application_id:#x})"
    if user_version != SCHEMA_VERSION:
        return f"schema version {user_version}, this agent reads {SCHEMA_VERSION}"
    return None


def encode_names(names: Iterable[str]) -> bytes:
    return "\n".join(sorted(names)).encode("utf-8", "surrogateescape")


def decode_names(blob: bytes) -> list[str]:
    if not isinstance(blob, bytes):
        raise IndexFormatError("names blob is not bytes")
    if len(blob) > MAX_NAMES_BLOB:
        raise IndexFormatError("names blob too large")
    if not blob:
        return []
    try:
        names = blob.decode("utf-8", "surrogateescape").split("\n")
    except UnicodeDecodeError as e:  # surrogateescape takes any byte: never, in fact
        raise IndexFormatError(f"names blob: {e}") from None
    if "" in names:
        raise IndexFormatError("names blob holds an empty name")
    return names


@dataclass(frozen=True, slots=True)
class HourCounts:
    """Files of one hour, by kind: what gauges and status sum instead of names."""

    segments: int = 0     # visible .ts
    hidden: int = 0       # .ts with a tombstone
    tombstones: int = 0

    @property
    def files(self) -> int:
        return self.segments + self.hidden + self.tombstones


def count_names(names: Iterable[str]) -> HourCounts:
    names = names if isinstance(names, (set, frozenset, dict)) else set(names)
    tombstones = sum(1 for n in names if n.endswith(TOMBSTONE_SUFFIX))
    segments = hidden = 0
    for n in names:
        if n.endswith(SEGMENT_SUFFIX):
            if tombstones and tombstone_filename_for(n) in names:
                hidden += 1
            else:
                segments += 1
    return HourCounts(segments, hidden, tombstones)


def encode_spans(spans: HourSpans) -> bytes:
    return json.dumps([spans.full, spans.any, spans.tombstones],
                      separators=(",", ":")).encode()


def decode_spans(blob: bytes) -> HourSpans:
    try:
        full, any_, tombstones = json.loads(blob)
        return HourSpans(tuple((float(a), float(b)) for a, b in full),
                         tuple((float(a), float(b)) for a, b in any_),
                         tuple(float(t) for t in tombstones))
    except (ValueError, TypeError) as e:
        raise IndexFormatError(f"spans: {e}") from None
