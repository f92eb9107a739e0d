"""Every message two agents exchange, as typed data, with bounded msgpack coding.

Wire form: a msgpack map `{"v": PROTOCOL_VERSION, "type": TYPE, ...fields}`.
`decode` takes untrusted bytes and returns a message object or raises
`ProtocolError`; it never raises anything else and never decodes more than the
limits allow (see `limits.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import msgpack

from . import limits
from .errors import ProtocolError, SegmentNameError
from .names import (
    Kind,
    SegmentName,
    parse_filename,
    parse_hour,
    parse_path,
    validate_component,
)

OFFER_STATUSES = ("want", "have", "tombstoned", "later")
MAX_RETRY_AFTER = 3600.0
ACK_STATUSES = ("stored", "have", "tombstoned")


# ---- field checkers: each takes the raw decoded value and returns it validated ----

def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string")
    return value


def _int(value: Any, what: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(f"{what} must be an integer in [{lo}, {hi}]")
    return value


def _digest(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ProtocolError(f"{what} must be 32 bytes")
    return value


def _list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise ProtocolError(f"{what} must be an array")
    return value


def _pair(value: Any, what: str, n: int) -> list:
    if not isinstance(value, list) or len(value) != n:
        raise ProtocolError(f"{what} must be an array of {n} items")
    return value


def _component(value: Any, what: str) -> str:
    try:
        return validate_component(value, what)
    except SegmentNameError as e:
        raise ProtocolError(str(e)) from None


def _hour(value: Any, what: str) -> str:
    try:
        parse_hour(value)
    except SegmentNameError as e:
        raise ProtocolError(f"{what}: {e}") from None
    return value


def _path(value: Any, what: str, kind: Kind) -> str:
    try:
        _, got = parse_path(value)
    except SegmentNameError as e:
        raise ProtocolError(f"{what}: {e}") from None
    if got is not kind:
        raise ProtocolError(f"{what} must name a {kind.value}")
    return value


def _status(value: Any, what: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ProtocolError(f"{what} must be one of {', '.join(allowed)}")
    return value


def _hour_range(first: str, last: str) -> None:
    lo, hi = parse_hour(first), parse_hour(last)
    if hi < lo:
        raise ProtocolError("last_hour is before first_hour")
    if (hi - lo).total_seconds() / 3600 > limits.MAX_HOUR_RANGE:
        raise ProtocolError(f"hour range longer than {limits.MAX_HOUR_RANGE} hours")


# ---- messages ----

class Message:
    TYPE: ClassVar[str]

    def to_obj(self) -> dict:
        obj = {"v": limits.PROTOCOL_VERSION, "type": self.TYPE}
        for f in fields(self):  # type: ignore[arg-type]
            obj[f.name] = getattr(self, f.name)
        return obj

    @classmethod
    def from_obj(cls, obj: dict) -> "Message":  # pragma: no cover - overridden
        raise NotImplementedError


def _require(obj: dict, *names: str) -> list:
    extra = set(obj) - set(names) - {"v", "type"}
    if extra:
        raise ProtocolError(f"unexpected fields: {', '.join(sorted(map(str, extra)))}")
    missing = [n for n in names if n not in obj]
    if missing:
        raise ProtocolError(f"missing fields: {', '.join(missing)}")
    return [obj[n] for n in names]


@dataclass(frozen=True)
class _PathAndSize(Message):
    """A segment path and its size in bytes: the shape of offers and fetch frames."""

    path: str
    size: int

    @classmethod
    def from_obj(cls, obj: dict) -> "_PathAndSize":
        path, size = _require(obj, "path", "size")
        return cls(
            _path(path, "path", Kind.SEGMENT),
            _int(size, "size", 0, limits.MAX_SEGMENT_BYTES),
        )


@dataclass(frozen=True)
class Offer(_PathAndSize):
    """'I have this segment of this size; do you want it?'"""

    TYPE: ClassVar[str] = "offer"

    @property
    def segment(self) -> SegmentName:
        return parse_path(self.path)[0]


@dataclass(frozen=True)
class OfferReply(Message):
    """`later` (offer again after `retry_after` seconds) goes only to senders that
    announce they understand it; every other reply has no `retry_after` on the wire,
    so an older peer decodes it."""

    TYPE: ClassVar[str] = "offer_reply"
    status: str
    retry_after: float | None = None

    def to_obj(self) -> dict:
        obj = super().to_obj()
        if self.retry_after is None:
            del obj["retry_after"]
        return obj

    @classmethod
    def from_obj(cls, obj: dict) -> "OfferReply":
        later = obj.get("status") == "later" or "retry_after" in obj
        status, *rest = _require(obj, "status", *(["retry_after"] if later else []))
        status = _status(status, "status", OFFER_STATUSES)
        if not later:
            return cls(status)
        if status != "later":
            raise ProtocolError("retry_after belongs to a 'later' reply only")
        (retry,) = rest
        if isinstance(retry, bool) or not isinstance(retry, (int, float)) \
                or not 0 < retry <= MAX_RETRY_AFTER:
            raise ProtocolError(f"retry_after must be a number in (0, {MAX_RETRY_AFTER:g}]")
        return cls(status, float(retry))


@dataclass(frozen=True)
class Tombstone(Message):
    """'This segment is tombstoned': path of the `.tombstone` file."""

    TYPE: ClassVar[str] = "tombstone"
    path: str

    @classmethod
    def from_obj(cls, obj: dict) -> "Tombstone":
        (path,) = _require(obj, "path")
        return cls(_path(path, "path", Kind.TOMBSTONE))

    @property
    def segment(self) -> SegmentName:
        return parse_path(self.path)[0]


@dataclass(frozen=True)
class Ack(Message):
    """Reply to a segment upload or a tombstone."""

    TYPE: ClassVar[str] = "ack"
    status: str

    @classmethod
    def from_obj(cls, obj: dict) -> "Ack":
        (status,) = _require(obj, "status")
        return cls(_status(status, "status", ACK_STATUSES))


@dataclass(frozen=True)
class PairDigestsRequest(Message):
    """Top level of the Merkle comparison: every (channel, quality) over an hour range."""

    TYPE: ClassVar[str] = "pair_digests_request"
    first_hour: str
    last_hour: str

    @classmethod
    def from_obj(cls, obj: dict) -> "PairDigestsRequest":
        first, last = _require(obj, "first_hour", "last_hour")
        first, last = _hour(first, "first_hour"), _hour(last, "last_hour")
        _hour_range(first, last)
        return cls(first, last)


@dataclass(frozen=True)
class PairDigests(Message):
    """`pairs`: [[channel, quality, digest over its hour digests in range], ...]."""

    TYPE: ClassVar[str] = "pair_digests"
    first_hour: str
    last_hour: str
    pairs: list

    @classmethod
    def from_obj(cls, obj: dict) -> "PairDigests":
        first, last, pairs = _require(obj, "first_hour", "last_hour", "pairs")
        pairs = _list(pairs, "pairs")
        if len(pairs) > limits.MAX_PAIRS:
            raise ProtocolError("too many pairs")
        out = []
        for item in pairs:
            channel, quality, digest = _pair(item, "pair", 3)
            out.append((
                _component(channel, "channel"),
                _component(quality, "quality"),
                _digest(digest, "pair digest"),
            ))
        return cls(_hour(first, "first_hour"), _hour(last, "last_hour"), out)


@dataclass(frozen=True)
class HourDigestsRequest(Message):
    TYPE: ClassVar[str] = "hour_digests_request"
    channel: str
    quality: str
    first_hour: str
    last_hour: str

    @classmethod
    def from_obj(cls, obj: dict) -> "HourDigestsRequest":
        channel, quality, first, last = _require(
            obj, "channel", "quality", "first_hour", "last_hour"
        )
        first, last = _hour(first, "first_hour"), _hour(last, "last_hour")
        _hour_range(first, last)
        return cls(_component(channel, "channel"), _component(quality, "quality"), first, last)


@dataclass(frozen=True)
class HourDigests(Message):
    """`hours`: [[hour, digest], ...] for the non-empty hours in range."""

    TYPE: ClassVar[str] = "hour_digests"
    channel: str
    quality: str
    hours: list

    @classmethod
    def from_obj(cls, obj: dict) -> "HourDigests":
        channel, quality, hours = _require(obj, "channel", "quality", "hours")
        hours = _list(hours, "hours")
        if len(hours) > limits.MAX_HOUR_RANGE + 1:
            raise ProtocolError("too many hours")
        out = []
        for item in hours:
            hour, digest = _pair(item, "hour digest", 2)
            out.append((_hour(hour, "hour"), _digest(digest, "hour digest")))
        return cls(_component(channel, "channel"), _component(quality, "quality"), out)


@dataclass(frozen=True)
class ListingRequest(Message):
    TYPE: ClassVar[str] = "listing_request"
    channel: str
    quality: str
    hour: str

    @classmethod
    def from_obj(cls, obj: dict) -> "ListingRequest":
        channel, quality, hour = _require(obj, "channel", "quality", "hour")
        return cls(
            _component(channel, "channel"), _component(quality, "quality"), _hour(hour, "hour")
        )


@dataclass(frozen=True)
class Listing(Message):
    """The replicable listing of one hour: visible segment and tombstone file names."""

    TYPE: ClassVar[str] = "listing"
    channel: str
    quality: str
    hour: str
    names: list

    @classmethod
    def from_obj(cls, obj: dict) -> "Listing":
        channel, quality, hour, names = _require(obj, "channel", "quality", "hour", "names")
        channel = _component(channel, "channel")
        quality = _component(quality, "quality")
        hour = _hour(hour, "hour")
        names = _list(names, "names")
        for name in names:
            try:
                parsed, _ = parse_filename(channel, quality, hour, _str(name, "name"))
            except SegmentNameError as e:
                raise ProtocolError(f"listing name: {e}") from None
            if not parsed.replicable:
                raise ProtocolError(f"listing holds a {parsed.type} name")
        return cls(channel, quality, hour, list(names))


@dataclass(frozen=True)
class FetchRequest(Message):
    """'Send me these segments, in this order, in one response' (a batch download)."""

    TYPE: ClassVar[str] = "fetch_request"
    paths: list

    @classmethod
    def from_obj(cls, obj: dict) -> "FetchRequest":
        (paths,) = _require(obj, "paths")
        paths = _list(paths, "paths")
        if not 1 <= len(paths) <= limits.MAX_FETCH_PATHS:
            raise ProtocolError(f"paths must hold 1 to {limits.MAX_FETCH_PATHS} segment paths")
        for path in paths:
            _path(path, "path", Kind.SEGMENT)
        return cls(list(paths))


@dataclass(frozen=True)
class FetchItem(_PathAndSize):
    """Frame header in a batch fetch response: `size` bytes of `path` follow."""

    TYPE: ClassVar[str] = "fetch_item"


@dataclass(frozen=True)
class FetchMissing(Message):
    """Frame header in a batch fetch response: `path` is not served (gone, tombstoned)."""

    TYPE: ClassVar[str] = "fetch_missing"
    path: str
    reason: str

    @classmethod
    def from_obj(cls, obj: dict) -> "FetchMissing":
        path, reason = _require(obj, "path", "reason")
        return cls(_path(path, "path", Kind.SEGMENT), _str(reason, "reason"))


@dataclass(frozen=True)
class StatusRequest(Message):
    TYPE: ClassVar[str] = "status_request"

    @classmethod
    def from_obj(cls, obj: dict) -> "StatusRequest":
        _require(obj)
        return cls()


@dataclass(frozen=True)
class Error(Message):
    """Every 4xx/5xx body on /v1: a machine code and a sentence for humans."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str

    @classmethod
    def from_obj(cls, obj: dict) -> "Error":
        code, message = _require(obj, "code", "message")
        return cls(_str(code, "code"), _str(message, "message"))


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Offer, OfferReply, Tombstone, Ack, PairDigestsRequest, PairDigests,
        HourDigestsRequest, HourDigests, ListingRequest, Listing, StatusRequest, Error,
        FetchRequest, FetchItem, FetchMissing,
    )
}


def encode(message: Message) -> bytes:
    return msgpack.packb(message.to_obj(), use_bin_type=True)


class _ContainerBudget:
    """Counts decoded containers so hostile bytes cannot become millions of objects."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def hook(self, value):
        self.left -= 1
        if self.left < 0:
            raise ProtocolError("message has too many arrays or maps")
        return value


# msgpack framing: bytes that follow a type byte (fixed), or the width of its length
# prefix (sized; ext types carry one more byte), or of its item count (containers).
_FIXED = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
}
_SIZED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC7: 1, 0xC8: 2, 0xC9: 4}
_EXT = frozenset({0xC7, 0xC8, 0xC9})
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def _check_framing(view: bytes) -> None:
    """Walk the container headers of the first msgpack object before unpacking it.

    msgpack allocates an array's slots when it reads its header, so a few KB of
    nested `array32(50000)` headers would cost tens of MB. Reject nesting deeper than
    `MAX_DEPTH` and any container that declares more items than bytes remain.
    """
    n = len(view)
    pos = 0
    pending = [1]  # items still expected at each open level; the root is one item
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= n:
            raise ProtocolError("malformed msgpack: truncated")
        b = view[pos]
        pos += 1
        if b <= 0x7F or b >= 0xE0:
            continue
        if 0xA0 <= b <= 0xBF:
            pos += b & 0x1F
            continue
        if b in _FIXED:
            pos += _FIXED[b]
            continue
        if b in _SIZED:
            width = _SIZED[b]
            pos += width + int.from_bytes(view[pos : pos + width], "big") + (b in _EXT)
            continue
        if 0x80 <= b <= 0x8F:
            count = (b & 0x0F) * 2
        elif 0x90 <= b <= 0x9F:
            count = b & 0x0F
        elif b in _CONTAINERS:
            width, per_item = _CONTAINERS[b]
            count = int.from_bytes(view[pos : pos + width], "big") * per_item
            pos += width
            if count > (limits.MAX_ARRAY if per_item == 1 else 2 * limits.MAX_MAP):
                raise ProtocolError("malformed msgpack: container longer than the limit")
        else:  # 0xC1 is never used
            raise ProtocolError(f"malformed msgpack: byte {b:#x}")
        if count > n - pos:
            raise ProtocolError("malformed msgpack: container longer than the message")
        if len(pending) > limits.MAX_DEPTH:
            raise ProtocolError(f"message nests deeper than {limits.MAX_DEPTH} levels")
        pending.append(count)


def unpack_bounded(data: bytes, max_bytes: int) -> Any:
    """Untrusted msgpack bytes -> Python objects, inside hard limits."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("message must be bytes")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_bytes:
        raise ProtocolError(f"message is larger than {max_bytes} bytes")
    data = bytes(data)
    _check_framing(data)
    budget = _ContainerBudget(limits.MAX_CONTAINERS)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=limits.MAX_STRING,
            max_bin_len=limits.MAX_BINARY,
            max_array_len=limits.MAX_ARRAY,
            max_map_len=limits.MAX_MAP,
            max_ext_len=0,
            list_hook=budget.hook,
            object_hook=budget.hook,
        )
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises many kinds for garbage
        raise ProtocolError(f"malformed msgpack: {type(e).__name__}") from None


def decode(
    data: bytes,
    expect: type[Message] | tuple[type[Message], ...] | None = None,
    max_bytes: int = limits.MAX_REQUEST_BYTES,
) -> Message:
    """Untrusted bytes -> one validated message (of the expected type(s), if given)."""
    obj = unpack_bounded(data, max_bytes)
    if not isinstance(obj, dict):
        raise ProtocolError("message must be a map")
    version = obj.get("v")
    if type(version) is not int or version != limits.PROTOCOL_VERSION:  # not True, not 1.0
        raise ProtocolError(f"unsupported protocol version {version!r}")
    type_name = obj.get("type")
    cls = MESSAGE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {type_name!r}")
    if expect is not None:
        wanted = expect if isinstance(expect, tuple) else (expect,)
        if cls not in wanted:
            raise ProtocolError(
                f"expected {' or '.join(w.TYPE for w in wanted)}, got {cls.TYPE}"
            )
    try:
        return cls.from_obj(obj)
    except ProtocolError:
        raise
    except Exception as e:  # a shape we did not foresee is still just bad input
        raise ProtocolError(f"malformed {cls.TYPE}: {type(e).__name__}") from None
