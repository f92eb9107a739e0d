"""Scrub decisions, sans-I/O: pass order, rate, resume point, verdicts, quarantine paths.

A scrub re-hashes every visible segment against the hash in its name, oldest hour
first, at a bounded byte rate, and remembers where it stopped so a restart resumes
the pass instead of starting it over. Everything here is pure: the clock and the
saved state are parameters; `agent.archive.scrub` carries the decisions out.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from .errors import ProtocolError, SegmentNameError
from .hashing import hash_bytes
from .names import parse_segment_path

EMPTY_HASH = hash_bytes(b"")
QUARANTINE_DIR = ".quarantine"
STATE_VERSION = 1
MAX_STATE_BYTES = 4096

# a position in a pass: (hour, channel, quality, file name); file names start with
# MM:SS.ffffff, so within an hour they sort by start time
Position = tuple[str, str, str, str]


class ScrubStateError(ProtocolError):
    """A saved scrub state that cannot be read; the scrub then starts afresh."""


@dataclass(frozen=True)
class ScrubState:
    """What survives a restart: where the pass in progress stopped, and when the last
    full pass ended (Unix times)."""

    cursor: Position | None = None  # last segment checked by the pass in progress
    pass_started: float | None = None  # None: no pass in progress
    last_full_pass: float | None = None

    @property
    def in_progress(self) -> bool:
        return self.pass_started is not None


def encode_state(state: ScrubState) -> bytes:
    return json.dumps({
        "v": STATE_VERSION,
        "cursor": list(state.cursor) if state.cursor else None,
        "pass_started": state.pass_started,
        "last_full_pass": state.last_full_pass,
    }, sort_keys=True).encode()


def _time(obj: dict, key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScrubStateError(f"{key} is not a time")
    return float(value)


def decode_state(data: bytes) -> ScrubState:
    """The saved state, validated; ScrubStateError on anything malformed."""
    if len(data) > MAX_STATE_BYTES:
        raise ScrubStateError(f"state larger than {MAX_STATE_BYTES} bytes")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ScrubStateError(f"not JSON: {e}") from None
    if not isinstance(obj, dict) or obj.get("v") != STATE_VERSION:
        raise ScrubStateError("not a version-1 scrub state")
    cursor = obj.get("cursor")
    if cursor is not None:
        if (not isinstance(cursor, list) or len(cursor) != 4
                or not all(isinstance(c, str) for c in cursor)):
            raise ScrubStateError("cursor is not [hour, channel, quality, file name]")
        hour, channel, quality, filename = cursor
        try:
            parse_segment_path(f"{channel}/{quality}/{hour}/{filename}")
        except SegmentNameError as e:
            raise ScrubStateError(f"cursor: {e}") from None
        cursor = (hour, channel, quality, filename)
    return ScrubState(cursor, _time(obj, "pass_started"), _time(obj, "last_full_pass"))


# ---- the pass ----

def pass_wait(state: ScrubState, now: float, interval: float) -> float:
    """Seconds until the next pass may start: a pass in progress resumes at once; a
    new one starts `interval` seconds after the last full pass ended."""
    if state.in_progress or state.last_full_pass is None:
        return 0.0
    return max(0.0, state.last_full_pass + interval - now)


def begin_pass(state: ScrubState, now: float) -> ScrubState:
    """A pass starts, or the one in progress resumes (its cursor kept)."""
    if state.in_progress:
        return state
    return replace(state, cursor=None, pass_started=now)


def advance(state: ScrubState, position: Position) -> ScrubState:
    return replace(state, cursor=position)


def end_pass(state: ScrubState, now: float) -> ScrubState:
    return ScrubState(cursor=None, pass_started=None, last_full_pass=now)


def hours_oldest_first(pairs_hours: Iterable[tuple[str, str, Iterable[str]]]
                       ) -> list[tuple[str, str, str]]:
    """(hour, channel, quality) for every (channel, quality, hours) given, oldest hour
    first (hour texts sort by time). One hour is listed at a time: memory stays at one
    hour's listing, not the archive's."""
    return sorted((hour, channel, quality)
                  for channel, quality, hours in pairs_hours for hour in hours)


def hour_after_cursor(hour_key: tuple[str, str, str], cursor: Position | None) -> bool:
    """Does the hour (hour, channel, quality) still hold unchecked segments?"""
    return cursor is None or hour_key >= cursor[:3]


def remaining_in_hour(hour_key: tuple[str, str, str], filenames: Iterable[str],
                      cursor: Position | None) -> list[str]:
    """The hour's segment file names the pass has not checked yet, oldest first."""
    names = sorted(filenames)
    if cursor is None or hour_key > cursor[:3]:
        return names
    if hour_key < cursor[:3]:
        return []
    return [n for n in names if n > cursor[3]]


def should_checkpoint(last_saved: float, now: float, every: float) -> bool:
    return now - last_saved >= every


# ---- rate ----

class RateBudget:
    """A token bucket over bytes: `delay(n, now)` says how long to wait before reading
    n more bytes so the long-run rate stays at `rate` bytes/s (None: no limit). A burst
    of at most one second's worth is allowed after an idle spell."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0 bytes/s, or None for no limit")
        self.rate = rate
        self._tokens = 0.0
        self._updated: float | None = None

    def delay(self, nbytes: int, now: float) -> float:
        """Take `nbytes` from the bucket; seconds to wait before using them."""
        if self.rate is None:
            return 0.0
        if self._updated is not None:
            self._tokens = min(self.rate, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= nbytes
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def slice_bytes(self, chunk: int) -> int:
        """Bytes to read in one go: at most `chunk`, and at most a tenth of a second's
        worth at the rate (short, even pauses rather than long ones)."""
        if self.rate is None:
            return chunk
        return max(64 * 1024, min(chunk, int(self.rate / 10)))


# ---- verdicts ----

GOOD = "good"
EMPTY = "empty"
MISMATCH = "mismatch"  # flipped bits, truncated, overwritten: the bytes are not the name's
UNREADABLE = "unreadable"  # the disk refused to read it


def verdict(expected_hash: bytes, digest: bytes | None, size: int) -> str:
    """What a scrub concludes from a file's hash (None: it could not be read)."""
    if digest is None:
        return UNREADABLE
    if digest == expected_hash:
        return GOOD
    return EMPTY if size == 0 else MISMATCH


def empty_file_is_rotten(expected_hash: bytes, size: int) -> bool:
    """An empty file under a name whose hash is not that of no bytes: caught before a
    transfer starts, as there is no last chunk to hold back."""
    return size == 0 and expected_hash != EMPTY_HASH


class RottenBytes(Exception):
    """Bytes being served do not hash to their segment's name: the transfer stops
    before its last chunk, so the receiver never gets a complete copy."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path


class ServedBytesCheck:
    """Hashes a segment's bytes as they are served (push upload, batch fetch, single
    download). `update` raises RottenBytes on the chunk that completes the file if the
    whole does not hash to the name: the caller then never sends that chunk."""

    __slots__ = ("path", "expected_hash", "size", "_sha", "_seen")

    def __init__(self, path: str, expected_hash: bytes, size: int) -> None:
        self.path = path
        self.expected_hash = expected_hash
        self.size = size
        self._sha = hashlib.sha256()
        self._seen = 0
        if empty_file_is_rotten(expected_hash, size):
            raise RottenBytes(path, "empty file")

    def update(self, chunk: bytes | memoryview) -> None:
        self._sha.update(chunk)
        self._seen += len(chunk)
        if self._seen >= self.size and self._sha.digest() != self.expected_hash:
            raise RottenBytes(path=self.path, why=f"{self._seen} bytes do not hash to the name")


def quarantine_relpath(segment_path: str, attempt: int = 0) -> str:
    """Where a rotten segment goes, beside the archive (a dot-directory is never a
    channel): `.quarantine/CHANNEL/QUALITY/HOUR/NAME`, with `.N` added on the N-th
    collision (the same name rotted again after a heal). Never overwritten."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    base = f"{QUARANTINE_DIR}/{segment_path}"
    return base if attempt == 0 else f"{base}.{attempt}"


def quarantined_segment(relpath: str) -> str | None:
    """The segment path (CHANNEL/QUALITY/HOUR/NAME.ts) a file under the quarantine
    was moved from (the inverse of `quarantine_relpath`, `.N` collision suffix
    included); None for anything that is not a quarantined segment."""
    prefix = QUARANTINE_DIR + "/"
    if not relpath.startswith(prefix):
        return None
    path = relpath[len(prefix):]
    head, dot, tail = path.rpartition(".")
    if dot and tail.isdigit() and tail[0] != "0" and head.endswith(".ts"):
        path = head
    try:
        parse_segment_path(path)
    except SegmentNameError:
        return None
    return path


def lost_segments(quarantined: Iterable[str], in_archive: Callable[[str], bool]
                  ) -> list[str]:
    """The lost segments: quarantined (relative paths under the root, as listed) with
    no good copy in the archive (`in_archive(path)`: visible, or tombstoned, which
    needs no copy). Each once, in the order a pass goes (oldest hour first)."""
    paths = {p for p in map(quarantined_segment, quarantined) if p is not None}

    def pass_order(path: str) -> tuple[str, str, str, str]:
        channel, quality, hour, filename = path.split("/")
        return hour, channel, quality, filename

    return sorted((p for p in paths if not in_archive(p)), key=pass_order)


__all__ = [
    "EMPTY", "EMPTY_HASH", "GOOD", "MISMATCH", "QUARANTINE_DIR", "UNREADABLE", "Position",
    "RateBudget", "RottenBytes", "ScrubState", "ScrubStateError", "ServedBytesCheck",
    "advance", "begin_pass", "decode_state", "empty_file_is_rotten", "encode_state",
    "end_pass", "hour_after_cursor", "hours_oldest_first", "lost_segments", "pass_wait",
    "quarantine_relpath", "quarantined_segment",
    "remaining_in_hour", "should_checkpoint", "verdict",
]
