"""File sets: chat batches and extras files, replicated beside the segments.

A file set is every file of one kind under one directory:

    ("chat", CHANNEL)   ROOT/CHANNEL/chat/HOUR/FILE   entries `HOUR/FILE`
    ("extras", DIR)     ROOT/DIR/PATH                 entries `PATH`

An entry is a relative path and a size. Sets are compared like segments, top-down:
one digest per set, then per bucket (a chat set's hour, an extras set's
`extras_bucket`), then the entries of the differing buckets. Digests cover the
paths only, never sizes or bytes: extras are never replaced, so two nodes holding
different bytes under one name (a media `.metadata.json`) are in sync. Pull only
ever adds files: a file that went away (a merged chat batch) is never a deletion.
All pure: what to fetch, given what the peer lists and what we hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from . import extras as ex
from .chat import (
    BATCH_SUFFIX,
    TOMBSTONE_SUFFIX,
    is_archiver_temp,
    parse_chat_rel,
)
from ..digests import hour_digest, hour_in_range, pair_digest
from ..errors import FileNameError, ProtocolError, SegmentNameError
from ..names import validate_component

CHAT = "chat"
EXTRAS = "extras"
KINDS = (CHAT, EXTRAS)

# limits of the messages that carry sets (see protocol/messages.py)
MAX_SETS = 1000  # sets one node holds: channels with chat, extras directories
MAX_ENTRIES = 20_000  # entries one reply carries (a paged listing continues after it)
MAX_ENTRIES_BYTES = 3 * 1024 * 1024  # encoded entries of one reply, at most
MAX_ENTRY_BUCKETS = 256  # buckets one entries request names
MAX_FILE_BYTES = 256 * 1024 * 1024  # one chat batch or extras file
MAX_BATCH_FILES = 256  # files one batch fetch asks for
MAX_BATCH_BYTES = 16 * 1024 * 1024  # bytes of files one batch fetch reply carries
BATCHED_FILE_BYTES = 1024 * 1024  # larger files are fetched one GET each
# a wubloader node's `GET /extras/DIR`: one JSON list of every path (no paging)
MAX_LEGACY_EXTRAS_BYTES = 64 * 1024 * 1024
MAX_LEGACY_EXTRAS_ITEMS = 500_000

SetKey = tuple[str, str]  # (kind, key)


def check_set(kind: object, key: object) -> SetKey:
    """A set's kind and key, validated; FileNameError otherwise."""
    if kind == CHAT:
        try:
            validate_component(key, "channel")
        except SegmentNameError as e:
            raise FileNameError(str(e)) from None
        return CHAT, key  # type: ignore[return-value]
    if kind == EXTRAS:
        return EXTRAS, ex.validate_extras_dir(key)
    raise FileNameError(f"file set kind {kind!r} is not one of {', '.join(KINDS)}")


def check_entry(kind: str, key: str, rel: object) -> str:
    """A replicable entry of a set (never a temp or hidden file); FileNameError why not."""
    if kind == CHAT:
        parse_chat_rel(key, rel)
        return rel  # type: ignore[return-value]
    verdict, why = ex.classify_extras_path(rel)
    if verdict != "ok":
        raise FileNameError(why or verdict)
    return rel  # type: ignore[return-value]


def bucket_of(kind: str, rel: str) -> str:
    """Chat: the entry's hour. Extras: two hex digits of the path's SHA-256."""
    if kind == CHAT:
        return rel.split("/", 1)[0]
    return ex.extras_bucket(rel)


def visible(kind: str, rels: Iterable[str]) -> list[str]:
    """The entries a set lists, sorted: a chat batch hidden by its tombstone is not
    listed (the tombstone is), as in wubloader's list_segment_files."""
    rels = set(rels)
    if kind != CHAT:
        return sorted(rels)
    return sorted(r for r in rels if not (
        r.endswith(BATCH_SUFFIX)
        and r[: -len(BATCH_SUFFIX)] + TOMBSTONE_SUFFIX in rels))


def bucket_digest(rels: Iterable[str]) -> bytes:
    """Digest of one bucket's listed entries (paths, one per line, sorted)."""
    return hour_digest(rels)


def set_digest(buckets: Iterable[tuple[str, bytes]]) -> bytes:
    """Digest of a set over its non-empty buckets' digests."""
    return pair_digest(buckets)


def bucket_in_range(kind: str, bucket: str, first_hour: str, last_hour: str) -> bool:
    """Chat buckets are hours and follow the backfill's hour range; extras are timeless."""
    return kind != CHAT or hour_in_range(bucket, first_hour, last_hour)


def group_buckets(counts: Mapping[str, int], max_entries: int = MAX_ENTRIES // 4,
                  max_buckets: int = MAX_ENTRY_BUCKETS) -> list[list[str]]:
    """Differing buckets into requests of about `max_entries` entries each (as the
    peer counted them), newest chat hour first; a big bucket goes alone (the reply
    pages)."""
    groups: list[list[str]] = []
    current: list[str] = []
    total = 0
    for bucket in sorted(counts, reverse=True):
        n = max(counts[bucket], 1)
        if current and (total + n > max_entries or len(current) >= max_buckets):
            groups.append(current)
            current, total = [], 0
        current.append(bucket)
        total += n
    if current:
        groups.append(current)
    return groups


@dataclass
class FilePlan:
    """What one set's comparison with a peer asks of us."""

    fetch: list[tuple[str, int | None]] = field(default_factory=list)  # (rel, size)
    tombstones: list[str] = field(default_factory=list)  # chat tombstones to create
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why): hostile
    ignored: int = 0  # temp and hidden files, other kinds of file
    skipped_tombstoned: int = 0
    skipped_vanished: int = 0  # chat batches we held and merged away
    too_large: int = 0


def plan_entries(kind: str, key: str, remote: Iterable[tuple[object, int | None]],
                 local: Mapping[str, object] | set[str] | frozenset[str],
                 vanished: Iterable[str] | None = None,
                 max_size: int = MAX_FILE_BYTES) -> FilePlan:
    """The peer's entries minus ours. `local` holds every entry we have (hidden chat
    batches included); `vanished` the chat batches we held and no longer hold (merged
    away: their messages are in a newer batch here). Hostile paths are refused, temp
    and hidden ones ignored; nothing is ever deleted."""
    plan = FilePlan()
    gone = vanished if vanished is not None else ()
    for rel, size in remote:
        if isinstance(rel, str) and rel in local:
            continue
        if kind == CHAT:
            if isinstance(rel, str) and (is_archiver_temp(rel) or rel.endswith(".ts")
                                         or rel.rsplit("/", 1)[-1].startswith(".")):
                plan.ignored += 1
                continue
            try:
                name = parse_chat_rel(key, rel)
            except FileNameError as e:
                plan.refused.append((str(rel)[:200], str(e)))
                continue
            if name.tombstone:
                plan.tombstones.append(name.rel)
                continue
            if name.as_tombstone.rel in local:
                plan.skipped_tombstoned += 1
                continue
            if name.rel in gone:
                plan.skipped_vanished += 1
                continue
        else:
            verdict, why = ex.classify_extras_path(rel)
            if verdict == "refused":
                plan.refused.append((str(rel)[:200], why or "refused"))
                continue
            if verdict == "ignored":
                plan.ignored += 1
                continue
        if size is not None and size > max_size:
            plan.too_large += 1
            continue
        plan.fetch.append((rel, size))  # type: ignore[arg-type]
    plan.fetch.sort(key=lambda item: item[0], reverse=True)  # newest chat first
    return plan


def decode_legacy_extras(data: bytes) -> list[str]:
    """A wubloader node's `GET /extras/DIR` reply -> its paths (unchecked strings):
    a bounded JSON list of strings, else ProtocolError."""
    if len(data) > MAX_LEGACY_EXTRAS_BYTES:
        raise ProtocolError(f"extras listing larger than {MAX_LEGACY_EXTRAS_BYTES} bytes")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        start = bytes(data[:40]).decode("utf-8", "replace")
        raise ProtocolError(f"extras listing is not JSON (starts {start!r})") from None
    if not isinstance(value, list):
        raise ProtocolError(f"extras listing is a JSON {type(value).__name__}, not a list")
    if len(value) > MAX_LEGACY_EXTRAS_ITEMS:
        raise ProtocolError(f"extras listing has more than {MAX_LEGACY_EXTRAS_ITEMS} paths")
    if not all(isinstance(item, str) and len(item) <= 4096 for item in value):
        raise ProtocolError("extras listing holds something that is not a short string")
    return value


def legacy_chat_rels(hour: str, names: Iterable[str]) -> list[tuple[str, None]]:
    """A wubloader chat hour listing (file names) as set entries of unknown size."""
    return [(f"{hour}/{n}" if isinstance(n, str) else n, None) for n in names]
