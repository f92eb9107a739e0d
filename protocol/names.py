"""Segment and tombstone names, byte-compatible with existing archives.

    CHANNEL/QUALITY/HOUR/MM:SS.ffffff-DURATION-TYPE-HASH.ts
    CHANNEL/QUALITY/HOUR/MM:SS.ffffff-DURATION-TYPE-HASH.tombstone

Parsing is strict and total: every input either parses into a `SegmentName` whose
`format` gives back exactly the input, or raises `SegmentNameError` saying why.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Iterable

from .errors import SegmentNameError
from .hashing import decode_hash, encode_hash

SEGMENT_SUFFIX = ".ts"
TOMBSTONE_SUFFIX = ".tombstone"
HOUR_FORMAT = "%Y-%m-%dT%H"
SEGMENT_TYPES = ("full", "suspect", "partial", "temp")
REPLICABLE_TYPES = frozenset({"full", "suspect", "partial"})
MAX_COMPONENT_LENGTH = 128
MAX_PATH_LENGTH = 512

_HOUR = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}\Z")
_TIME = re.compile(r"([0-9]{2}):([0-9]{2})\.([0-9]{6})\Z")
_DURATION = re.compile(r"(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,9})?\Z")
# wubloader's downloader names a download in progress `...-temp-<str(uuid4())>.ts`;
# any case, with or without the dashes, is taken as the same kind of marker
_TEMP_ID = re.compile(
    r"(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32})\Z"
)


class Kind(Enum):
    SEGMENT = "segment"
    TOMBSTONE = "tombstone"


@dataclass(frozen=True, slots=True)
class SegmentName:
    """One version of one segment, as named on disk."""

    channel: str
    quality: str
    hour: str
    start: dt.datetime
    duration: Decimal
    type: str
    hash: bytes
    # every path and file name derives from the stem: formatted once, on first use
    _stem: str | None = field(default=None, init=False, repr=False, compare=False)
    # a downloader's temp file has a UUID where the hash goes (then `hash` is b"")
    temp_id: str | None = None

    @property
    def stem(self) -> str:
        """The file name without suffix: `MM:SS.ffffff-DURATION-TYPE-HASH`."""
        if self._stem is None:
            tail = self.temp_id if self.temp_id is not None else encode_hash(self.hash)
            object.__setattr__(self, "_stem", (
                f"{self.start:%M:%S.%f}-{self.duration:f}-{self.type}-{tail}"
            ))
        return self._stem  # type: ignore[return-value]

    @property
    def filename(self) -> str:
        return self.stem + SEGMENT_SUFFIX

    @property
    def tombstone_filename(self) -> str:
        return self.stem + TOMBSTONE_SUFFIX

    @property
    def hour_path(self) -> str:
        return f"{self.channel}/{self.quality}/{self.hour}"

    @property
    def path(self) -> str:
        """Relative path of the segment file under the archive root."""
        return f"{self.hour_path}/{self.filename}"

    @property
    def tombstone_path(self) -> str:
        return f"{self.hour_path}/{self.tombstone_filename}"

    @property
    def hash_text(self) -> str:
        return self.temp_id if self.temp_id is not None else encode_hash(self.hash)

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=float(self.duration))

    @property
    def replicable(self) -> bool:
        """Temp segments are being written by the downloader: never replicated or used."""
        return self.type in REPLICABLE_TYPES

    def format(self, kind: Kind = Kind.SEGMENT) -> str:
        return self.path if kind is Kind.SEGMENT else self.tombstone_path


def validate_component(value: object, what: str) -> str:
    """A channel or quality: a plain, non-empty, single path component."""
    if not isinstance(value, str):
        raise SegmentNameError(f"{what} must be a string")
    if not value:
        raise SegmentNameError(f"{what} is empty")
    if len(value) > MAX_COMPONENT_LENGTH:
        raise SegmentNameError(f"{what} is longer than {MAX_COMPONENT_LENGTH} characters")
    if value.startswith("."):
        raise SegmentNameError(f"{what} {value!r} starts with '.'")
    for bad, label in (("/", "'/'"), ("\\", "'\\'"), ("\x00", "NUL"), ("..", "'..'")):
        if bad in value:
            raise SegmentNameError(f"{what} {value!r} contains {label}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise SegmentNameError(f"{what} {value!r} contains a control character")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise SegmentNameError(f"{what} {value!r} is not valid Unicode")
    return value


def parse_hour(value: object) -> dt.datetime:
    """`%Y-%m-%dT%H` -> an aware UTC datetime at the start of that hour."""
    if not isinstance(value, str) or not _HOUR.match(value):
        raise SegmentNameError(f"hour {value!r} is not of the form YYYY-MM-DDTHH")
    return _parse_hour_text(value)


@functools.lru_cache(maxsize=4096)
def _parse_hour_text(value: str) -> dt.datetime:
    # every segment name carries its hour and strptime costs ~30 us: a listing or a
    # scan parses the same few hours again and again (errors are not cached)
    try:
        return dt.datetime.strptime(value, HOUR_FORMAT).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise SegmentNameError(f"hour {value!r} is not a real UTC hour") from None


def format_hour(when: dt.datetime) -> str:
    # Not strftime: on glibc, %Y does not zero-pad years before 1000.
    t = when.astimezone(dt.timezone.utc)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}"


def _parse_duration(text: str) -> Decimal:
    if not _DURATION.match(text):
        raise SegmentNameError(f"duration {text!r} is not a positive decimal number")
    value = Decimal(text)
    if not value > 0:
        raise SegmentNameError(f"duration {text!r} is not positive")
    return value


@functools.lru_cache(maxsize=4096)
def _valid_component(value: str, what: str) -> str:
    # a listing or a scan checks the same channel and quality for every name
    # (a third of a scan's time, uncached); errors are not cached
    return validate_component(value, what)


def parse_filename(
    channel: str, quality: str, hour: str, filename: str
) -> tuple[SegmentName, Kind]:
    """Parse a file name found in CHANNEL/QUALITY/HOUR into a name and its kind."""
    for value, what in ((channel, "channel"), (quality, "quality")):
        if isinstance(value, str):
            _valid_component(value, what)
        else:
            validate_component(value, what)
    hour_start = parse_hour(hour)
    if not isinstance(filename, str):
        raise SegmentNameError("file name must be a string")
    if filename.endswith(SEGMENT_SUFFIX):
        kind, stem = Kind.SEGMENT, filename[: -len(SEGMENT_SUFFIX)]
    elif filename.endswith(TOMBSTONE_SUFFIX):
        kind, stem = Kind.TOMBSTONE, filename[: -len(TOMBSTONE_SUFFIX)]
    else:
        raise SegmentNameError(f"file name {filename!r} ends in neither .ts nor .tombstone")
    parts = stem.split("-", 3)
    if len(parts) != 4:
        raise SegmentNameError(
            f"file name {filename!r} is not TIME-DURATION-TYPE-HASH{SEGMENT_SUFFIX}"
        )
    time_text, duration_text, type_text, hash_text = parts
    match = _TIME.match(time_text)
    if not match:
        raise SegmentNameError(f"time {time_text!r} is not MM:SS.ffffff")
    minutes, seconds, micros = (int(g) for g in match.groups())
    if minutes > 59:
        raise SegmentNameError(f"minutes {minutes} out of range 00-59")
    if seconds > 59:
        raise SegmentNameError(f"seconds {seconds} out of range 00-59")
    duration = _parse_duration(duration_text)
    if type_text not in SEGMENT_TYPES:
        raise SegmentNameError(
            f"type {type_text!r} is not one of {', '.join(SEGMENT_TYPES)}"
        )
    temp_id = None
    if type_text == "temp" and _TEMP_ID.match(hash_text):
        digest, temp_id = b"", hash_text
    else:
        digest = decode_hash(hash_text)
    start = hour_start + dt.timedelta(minutes=minutes, seconds=seconds, microseconds=micros)
    try:
        start + dt.timedelta(seconds=float(duration))
    except OverflowError:
        raise SegmentNameError(f"segment {filename!r} ends after year 9999") from None
    return SegmentName(channel, quality, hour, start, duration, type_text, digest,
                       temp_id=temp_id), kind


# One regex for a replicable file name in the form every downloader writes: a scan
# meets millions of them, and `parse_filename` (a SegmentName, a datetime, a decoded
# hash each) was two thirds of a cold start (py-spy, 5M segments). It accepts only
# what `parse_filename` accepts: minutes and seconds 00-59, a positive duration, a
# canonical hash (its 43rd character carries two zero bits: one of 16 letters).
# Anything else is left to `parse_filename`.
_REPLICABLE_FILENAME = re.compile(
    r"[0-5][0-9]:[0-5][0-9]\.[0-9]{6}"
    r"-(?:[1-9][0-9]{0,8}(?:\.[0-9]{1,9})?|0\.(?=[0-9]{0,8}[1-9])[0-9]{1,9})"
    r"-(?:full|suspect|partial)"
    r"-[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]"
    r"(?:\.ts|\.tombstone)\Z"
)
_FAST_MAX_YEAR = 9900  # later, a long duration could end after year 9999: parsed in full


def _plain_hour_dir(channel: object, quality: object, hour: object) -> bool:
    try:
        for value, what in ((channel, "channel"), (quality, "quality")):
            if not isinstance(value, str):
                return False
            _valid_component(value, what)
        return parse_hour(hour).year < _FAST_MAX_YEAR
    except SegmentNameError:
        return False


def split_common_names(channel: str, quality: str, hour: str, filenames: Iterable[str]
                       ) -> tuple[list[str], list[str], list[str]]:
    """The file names of one hour directory as (segments, tombstones, others): the
    first two replicable names in the common form, recognised by one regex match; the
    others (temp, unusual or bad names, dot-files) are for `parse_filename`, which
    says why it rejects one. All are others when the directory itself is not valid."""
    if not _plain_hour_dir(channel, quality, hour):
        return [], [], list(filenames)
    match = _REPLICABLE_FILENAME.match
    segments: list[str] = []
    tombstones: list[str] = []
    others: list[str] = []
    for filename in filenames:
        if match(filename) is None:
            others.append(filename)
        elif filename[-1] == "s":  # .ts, not .tombstone
            segments.append(filename)
        else:
            tombstones.append(filename)
    return segments, tombstones, others


def parse_path(path: object) -> tuple[SegmentName, Kind]:
    """Parse `CHANNEL/QUALITY/HOUR/FILE` (relative, exactly four components)."""
    if not isinstance(path, str):
        raise SegmentNameError("path must be a string")
    if len(path) > MAX_PATH_LENGTH:
        raise SegmentNameError(f"path is longer than {MAX_PATH_LENGTH} characters")
    if path.startswith("/"):
        raise SegmentNameError(f"path {path!r} is absolute")
    if "\\" in path or "\x00" in path:
        raise SegmentNameError(f"path {path!r} contains '\\' or NUL")
    parts = path.split("/")
    if len(parts) != 4:
        raise SegmentNameError(
            f"path {path!r} is not CHANNEL/QUALITY/HOUR/FILE (got {len(parts)} components)"
        )
    return parse_filename(*parts)


def parse_segment_path(path: object) -> SegmentName:
    """A path that must name a segment (`.ts`), not a tombstone."""
    name, kind = parse_path(path)
    if kind is not Kind.SEGMENT:
        raise SegmentNameError(f"path {path!r} names a tombstone, not a segment")
    return name


def parse_tombstone_path(path: object) -> SegmentName:
    """A path that must name a tombstone; returns the segment it hides."""
    name, kind = parse_path(path)
    if kind is not Kind.TOMBSTONE:
        raise SegmentNameError(f"path {path!r} names a segment, not a tombstone")
    return name


def tombstone_filename_for(segment_filename: str) -> str:
    """`X.ts` -> `X.tombstone` (no validation: callers hold a parsed name)."""
    return segment_filename[: -len(SEGMENT_SUFFIX)] + TOMBSTONE_SUFFIX


def segment_filename_for(tombstone_filename: str) -> str:
    return tombstone_filename[: -len(TOMBSTONE_SUFFIX)] + SEGMENT_SUFFIX


def make_segment_name(channel: str, quality: str, start: dt.datetime,
                      duration: str | Decimal, type_: str, hash_: bytes) -> SegmentName:
    """The name of a segment from its parts, validated like a parsed one (the hour is
    the UTC hour of `start`)."""
    start = start.astimezone(dt.timezone.utc)
    return parse_segment_path(
        f"{channel}/{quality}/{format_hour(start)}/{start:%M:%S.%f}-{Decimal(duration):f}-"
        f"{type_}-{encode_hash(hash_)}{SEGMENT_SUFFIX}")


def downloader_temp_filename(name: SegmentName, tag: str) -> str:
    """The name a downloader writes `name` under until it is complete: type `temp` and
    `tag` (wubloader uses a UUID) where the hash goes."""
    return f"{name.start:%M:%S.%f}-{name.duration:f}-temp-{tag}{SEGMENT_SUFFIX}"
