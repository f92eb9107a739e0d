"""Every message two agents exchange, as typed data, with bounded msgpack coding.

Wire form: a msgpack map `{"v": PROTOCOL_VERSION, "type": TYPE, ...fields}`.
`decode` takes untrusted bytes and returns a message object or raises
`ProtocolError`; it never raises anything else and never decodes more than the
limits allow (see `limits.py`).

Each message is declared once: a frozen dataclass whose fields carry their
validator (`wire(check)`). One generic `Record.from_obj` checks the field set,
runs each validator, then the message's cross-field check. Closed messages
(every request and reply except the status reply) refuse unknown keys; open
ones (`OPEN = True`) ignore them and give absent optional fields their default,
so a newer node can add a field without breaking an older reader.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, ClassVar

import msgpack

from .filesets import sets as fs
from . import limits
from .errors import FileNameError, ProtocolError, SegmentNameError
from .names import (
    Kind,
    SegmentName,
    parse_filename,
    parse_hour,
    parse_path,
    validate_component,
)

OFFER_STATUSES = ("want", "have", "tombstoned")
MAX_RETRY_AFTER = 3600.0  # seconds an OfferLater may ask the sender to wait, at most
ACK_STATUSES = ("stored", "have", "tombstoned")

# A validator takes the raw decoded value and the field's name, and returns the value
# to store (validated, possibly converted) or raises ProtocolError.
Check = Callable[[Any, str], Any]
_CHECK = "segsync.check"


# ---- validators ----

def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string")
    return value


def _int(value: Any, what: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(f"{what} must be an integer in [{lo}, {hi}]")
    return value


def integer(lo: int = 0, hi: int = 2**63 - 1) -> Check:
    return lambda value, what: _int(value, what, lo, hi)


def _number(value: Any, what: str) -> float:
    """A wall-clock time or other real number (int or float, never bool)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ProtocolError(f"{what} must be a number")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{what} must be true or false")
    return value


def _digest(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ProtocolError(f"{what} must be 32 bytes")
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


def path_of(kind: Kind) -> Check:
    """A segment or tombstone path (channel/quality/hour/file) naming that kind."""

    def check(value: Any, what: str) -> str:
        try:
            _, got = parse_path(value)
        except SegmentNameError as e:
            raise ProtocolError(f"{what}: {e}") from None
        if got is not kind:
            raise ProtocolError(f"{what} must name a {kind.value}")
        return value

    return check


def one_of(allowed: tuple[str, ...]) -> Check:
    def check(value: Any, what: str) -> str:
        if value not in allowed:
            raise ProtocolError(f"{what} must be one of {', '.join(allowed)}")
        return value

    return check


def optional(check: Check) -> Check:
    """None, or what `check` accepts."""
    return lambda value, what: None if value is None else check(value, what)


def array(item: Check | None, item_name: str, max_items: int, too_many: str,
          min_items: int = 0) -> Check:
    """An array of at most `max_items` (else the `too_many` error), each checked
    as `item_name`; decodes to a new list."""

    def check(value: Any, what: str) -> list:
        if not isinstance(value, list):
            raise ProtocolError(f"{what} must be an array")
        if not min_items <= len(value) <= max_items:
            raise ProtocolError(too_many)
        return list(value) if item is None else [item(v, item_name) for v in value]

    return check


def fixed(*items: tuple[Check, str]) -> Check:
    """An array of exactly these items (each with its checker and name); a tuple."""

    def check(value: Any, what: str) -> tuple:
        if not isinstance(value, list) or len(value) != len(items):
            raise ProtocolError(f"{what} must be an array of {len(items)} items")
        return tuple(c(v, name) for v, (c, name) in zip(value, items, strict=True))

    return check


def records(cls: type["Record"], max_items: int) -> Check:
    """An array of at most `max_items` maps, each decoded as a `cls` record."""

    def check(value: Any, what: str) -> list:
        if not isinstance(value, list):
            raise ProtocolError(f"{what} must be an array")
        if len(value) > max_items:
            raise ProtocolError(f"{what} holds more than {max_items} entries")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ProtocolError(f"{what}[{i}] must be a map")
            try:
                out.append(cls.from_obj(item))
            except ProtocolError as e:
                raise ProtocolError(f"{what}[{i}]: {e}") from None
        return out

    return check


def record(cls: type["Record"]) -> Check:
    """One map, decoded as a `cls` record."""

    def check(value: Any, what: str) -> Any:
        if not isinstance(value, dict):
            raise ProtocolError(f"{what} must be a map")
        try:
            return cls.from_obj(value)
        except ProtocolError as e:
            raise ProtocolError(f"{what}: {e}") from None

    return check


def wire(check: Check, default: Any = MISSING) -> Any:
    """Declare a message field with its validator (and a default if optional)."""
    return field(default=default, metadata={_CHECK: check})


def _hour_range(first: str, last: str) -> None:
    lo, hi = parse_hour(first), parse_hour(last)
    if hi < lo:
        raise ProtocolError("last_hour is before first_hour")
    if (hi - lo).total_seconds() / 3600 > limits.MAX_HOUR_RANGE:
        raise ProtocolError(f"hour range longer than {limits.MAX_HOUR_RANGE} hours")


# ---- the generic record ----

_RESERVED = frozenset({"v", "type"})


class Record:
    """Fields declared with `wire(...)`, decoded by one generic `from_obj`."""

    OPEN: ClassVar[bool] = False  # ignore unknown keys instead of refusing them

    def to_obj(self) -> dict:
        declared = fields(self)  # type: ignore[arg-type]
        return {f.name: _to_wire(getattr(self, f.name)) for f in declared}

    @classmethod
    def from_obj(cls, obj: dict) -> Any:
        declared = fields(cls)  # type: ignore[arg-type]
        if not cls.OPEN:
            extra = set(obj) - {f.name for f in declared} - _RESERVED
            if extra:
                raise ProtocolError(f"unexpected fields: {', '.join(sorted(map(str, extra)))}")
        missing = [f.name for f in declared
                   if f.name not in obj and f.default is MISSING]
        if missing:
            raise ProtocolError(f"missing fields: {', '.join(missing)}")
        values = {f.name: f.metadata[_CHECK](obj[f.name], f.name)
                  for f in declared if f.name in obj}
        cls.check_across(values)
        return cls(**values)

    @classmethod
    def check_across(cls, values: dict) -> None:
        """Rules between fields, run after each field passed its own validator."""


def _to_wire(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_obj()
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    return value


class Message(Record):
    TYPE: ClassVar[str]

    def to_obj(self) -> dict:
        return {"v": limits.PROTOCOL_VERSION, "type": self.TYPE, **super().to_obj()}


# ---- messages ----

@dataclass(frozen=True)
class _PathAndSize(Message):
    """A segment path and its size in bytes: the shape of offers and fetch frames."""

    path: str = wire(path_of(Kind.SEGMENT))
    size: int = wire(integer(0, limits.MAX_SEGMENT_BYTES))


@dataclass(frozen=True)
class Offer(_PathAndSize):
    """'I have this segment of this size; do you want it?'"""

    TYPE: ClassVar[str] = "offer"

    @property
    def segment(self) -> SegmentName:
        return parse_path(self.path)[0]


@dataclass(frozen=True)
class OfferReply(Message):
    TYPE: ClassVar[str] = "offer_reply"
    status: str = wire(one_of(OFFER_STATUSES))


def _retry_after(value: Any, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not 0 < value <= MAX_RETRY_AFTER:
        raise ProtocolError(f"{what} must be a number in (0, {MAX_RETRY_AFTER:g}]")
    return float(value)


@dataclass(frozen=True)
class OfferLater(Message):
    """The other answer to an offer: 'my own downloader is about to write this
    segment; offer it again in `retry_after` seconds'. Sent only to a pusher whose
    offer carries `endpoints.OFFER_LATER_HEADER` (an older pusher gets OfferReply)."""

    TYPE: ClassVar[str] = "offer_later"
    retry_after: float = wire(_retry_after)


@dataclass(frozen=True)
class Tombstone(Message):
    """'This segment is tombstoned': path of the `.tombstone` file."""

    TYPE: ClassVar[str] = "tombstone"
    path: str = wire(path_of(Kind.TOMBSTONE))

    @property
    def segment(self) -> SegmentName:
        return parse_path(self.path)[0]


@dataclass(frozen=True)
class Ack(Message):
    """Reply to a segment upload or a tombstone."""

    TYPE: ClassVar[str] = "ack"
    status: str = wire(one_of(ACK_STATUSES))


class _HourRange:
    """Mixin: `first_hour` .. `last_hour` must be in order and within MAX_HOUR_RANGE."""

    @classmethod
    def check_across(cls, values: dict) -> None:
        _hour_range(values["first_hour"], values["last_hour"])


@dataclass(frozen=True)
class PairDigestsRequest(_HourRange, Message):
    """Top level of the Merkle comparison: every (channel, quality) over an hour range."""

    TYPE: ClassVar[str] = "pair_digests_request"
    first_hour: str = wire(_hour)
    last_hour: str = wire(_hour)


@dataclass(frozen=True)
class PairDigests(Message):
    """`pairs`: [[channel, quality, digest over its hour digests in range], ...]."""

    TYPE: ClassVar[str] = "pair_digests"
    first_hour: str = wire(_hour)
    last_hour: str = wire(_hour)
    pairs: list = wire(array(
        fixed((_component, "channel"), (_component, "quality"), (_digest, "pair digest")),
        "pair", limits.MAX_PAIRS, "too many pairs"))


@dataclass(frozen=True)
class HourDigestsRequest(_HourRange, Message):
    TYPE: ClassVar[str] = "hour_digests_request"
    channel: str = wire(_component)
    quality: str = wire(_component)
    first_hour: str = wire(_hour)
    last_hour: str = wire(_hour)


@dataclass(frozen=True)
class HourDigests(Message):
    """`hours`: [[hour, digest], ...] for the non-empty hours in range."""

    TYPE: ClassVar[str] = "hour_digests"
    channel: str = wire(_component)
    quality: str = wire(_component)
    hours: list = wire(array(fixed((_hour, "hour"), (_digest, "hour digest")),
                             "hour digest", limits.MAX_HOUR_RANGE + 1, "too many hours"))


@dataclass(frozen=True)
class ListingRequest(Message):
    TYPE: ClassVar[str] = "listing_request"
    channel: str = wire(_component)
    quality: str = wire(_component)
    hour: str = wire(_hour)


@dataclass(frozen=True)
class Listing(Message):
    """The replicable listing of one hour: visible segment and tombstone file names."""

    TYPE: ClassVar[str] = "listing"
    channel: str = wire(_component)
    quality: str = wire(_component)
    hour: str = wire(_hour)
    names: list = wire(array(_str, "name", limits.MAX_ARRAY, "too many names"))

    @classmethod
    def check_across(cls, values: dict) -> None:
        """Each name is a replicable file of this very hour."""
        for name in values["names"]:
            try:
                parsed, _ = parse_filename(values["channel"], values["quality"],
                                           values["hour"], name)
            except SegmentNameError as e:
                raise ProtocolError(f"listing name: {e}") from None
            if not parsed.replicable:
                raise ProtocolError(f"listing holds a {parsed.type} name")


@dataclass(frozen=True)
class FetchRequest(Message):
    """'Send me these segments, in this order, in one response' (a batch download)."""

    TYPE: ClassVar[str] = "fetch_request"
    paths: list = wire(array(
        path_of(Kind.SEGMENT), "path", limits.MAX_FETCH_PATHS,
        f"paths must hold 1 to {limits.MAX_FETCH_PATHS} segment paths", min_items=1))


@dataclass(frozen=True)
class FetchItem(_PathAndSize):
    """Frame header in a batch fetch response: `size` bytes of `path` follow."""

    TYPE: ClassVar[str] = "fetch_item"


@dataclass(frozen=True)
class FetchMissing(Message):
    """Frame header in a batch fetch response: `path` is not served (gone, tombstoned)."""

    TYPE: ClassVar[str] = "fetch_missing"
    path: str = wire(path_of(Kind.SEGMENT))
    reason: str = wire(_str)


@dataclass(frozen=True)
class StatusRequest(Message):
    TYPE: ClassVar[str] = "status_request"


@dataclass(frozen=True)
class PeerStatus(Record):
    """One peer as the node sees it (a row of `segsync status`). Open: fields a newer
    node adds are ignored by older readers; every field but `url` may be absent.
    Times are the node's wall clock (seconds since the epoch); None means never/unknown."""

    OPEN: ClassVar[bool] = True
    url: str = wire(_str)
    name: str | None = wire(optional(_str), None)  # the peer's name (metric label)
    kind: str | None = wire(optional(_str), None)  # what it speaks: "segsync", ...
    queue_depth: int | None = wire(optional(integer()), None)
    last_push: float | None = wire(optional(_number), None)
    push_error: str | None = wire(optional(_str), None)
    push_dropped: int | None = wire(optional(integer()), None)
    push_deferred: int | None = wire(optional(integer()), None)  # offers parked for "later"
    last_round: float | None = wire(optional(_number), None)
    round_ok: bool | None = wire(optional(_bool), None)
    round_error: str | None = wire(optional(_str), None)
    missing: int | None = wire(optional(integer()), None)
    reachable: bool | None = wire(optional(_bool), None)
    reach_error: str | None = wire(optional(_str), None)

    def __post_init__(self) -> None:
        """Errors are cut to MAX_STRING bytes: an error quoting a peer's own error text could
        be longer, and one over-long string would make the whole reply undecodable."""
        for name in ("push_error", "round_error", "reach_error"):
            text = getattr(self, name)
            if isinstance(text, str):
                object.__setattr__(self, name, clip(text))


def clip(text: str, max_bytes: int = limits.MAX_STRING) -> str:
    """`text` cut to at most `max_bytes` of UTF-8 (msgpack's string limit counts bytes),
    ending in '...' when cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 3].decode("utf-8", "ignore") + "..."


@dataclass(frozen=True)
class RecordedPairStatus(Record):
    """A (channel, quality) the node's own downloader records, or its operator
    declared (config `records`): offers of it wait for that downloader while
    `recording`. `last_local`: when its downloader's last file appeared (None:
    none yet)."""

    OPEN: ClassVar[bool] = True
    channel: str = wire(_str)
    quality: str = wire(_str)
    declared: bool = wire(_bool)
    recording: bool = wire(_bool)
    last_local: float | None = wire(optional(_number), None)


@dataclass(frozen=True)
class PeerSourceStatus(Record):
    """A source of the node's peer list beyond its flags (`file`: the peers file,
    `database`: wubloader's nodes table), open like PeerStatus. A source that fails
    keeps its last good list: `peers` counts that list's entries (this node's own
    included), `ok` is None before the first read."""

    OPEN: ClassVar[bool] = True
    source: str = wire(_str)
    where: str | None = wire(optional(_str), None)  # path, or USER@HOST:PORT/DB (no password)
    peers: int | None = wire(optional(integer()), None)
    ok: bool | None = wire(optional(_bool), None)
    error: str | None = wire(optional(_str), None)  # why the last read failed
    failing_since: float | None = wire(optional(_number), None)
    last_read: float | None = wire(optional(_number), None)  # the last good read

    def __post_init__(self) -> None:
        for name in ("where", "error"):  # cut like PeerStatus's errors
            text = getattr(self, name)
            if isinstance(text, str):
                object.__setattr__(self, name, clip(text))


@dataclass(frozen=True)
class ScrubStatus(Record):
    """The scrub as the node sees it (`segsync status`): counts since the agent started,
    the last full pass (wall clock), where the pass in progress is, and the segments no
    peer could give back (still in quarantine). Open, like PeerStatus."""

    OPEN: ClassVar[bool] = True
    checked: int = wire(integer())
    bytes: int = wire(integer())
    rotten: int = wire(integer())
    healed: int = wire(integer())
    lost: int = wire(integer())
    lost_paths: list | None = wire(optional(array(
        path_of(Kind.SEGMENT), "lost_paths item", limits.MAX_STATUS_LOST_PATHS,
        f"lost_paths holds more than {limits.MAX_STATUS_LOST_PATHS} paths")), None)
    last_full_pass: float | None = wire(optional(_number), None)
    pass_started: float | None = wire(optional(_number), None)  # None: no pass running
    position: str | None = wire(optional(path_of(Kind.SEGMENT)), None)  # last checked


@dataclass(frozen=True)
class TlsStatus(Record):
    """The certificate a node serves (its status reply's `tls`; absent: plain http).
    Open like PeerStatus. Times are the node's wall clock."""

    OPEN: ClassVar[bool] = True
    cert: str = wire(_str)  # the file it was read from
    subject: str | None = wire(optional(_str), None)
    not_after: float | None = wire(optional(_number), None)
    loaded_at: float | None = wire(optional(_number), None)
    problem: str | None = wire(optional(_str), None)  # not valid now: expired, not yet valid
    reload_error: str | None = wire(optional(_str), None)  # the last reload failed: why

    def __post_init__(self) -> None:
        for name in ("cert", "subject", "problem", "reload_error"):
            text = getattr(self, name)
            if isinstance(text, str):
                object.__setattr__(self, name, clip(text))


@dataclass(frozen=True)
class BandwidthStatus(Record):
    """One direction's bandwidth limit as the node sees it (its status reply's
    `bandwidth`; absent from older nodes). Rates in bytes per second, over the last
    seconds; bytes and seconds waited for the limiter since the agent started, per
    class (live, catch-up). Open like PeerStatus."""

    OPEN: ClassVar[bool] = True
    direction: str = wire(one_of(("upload", "download")))
    limit: float | None = wire(optional(_number), None)  # None: no limit
    live_rate: float = wire(_number, 0.0)
    catchup_rate: float = wire(_number, 0.0)
    live_bytes: int = wire(integer(), 0)
    catchup_bytes: int = wire(integer(), 0)
    live_waited: float = wire(_number, 0.0)
    catchup_waited: float = wire(_number, 0.0)
    live_waiting: int = wire(integer(), 0)  # transfers waiting for the limiter now
    catchup_waiting: int = wire(integer(), 0)
    problem: str | None = wire(optional(_str), None)  # a change of the limits refused: why

    def __post_init__(self) -> None:
        if isinstance(self.problem, str):
            object.__setattr__(self, "problem", clip(self.problem))


@dataclass(frozen=True)
class IndexStatus(Record):
    """The archive index (its status reply's `index`): saved under ROOT/.segsync/ or
    in memory only (`problem` says why), hours, hot hours (names in memory), cold
    hours loaded on demand since start, size on disk, the last start (warm, or a
    full scan and why) with its phases. Open like PeerStatus."""

    OPEN: ClassVar[bool] = True
    persistent: bool = wire(_bool)
    hours: int = wire(integer())
    hot_hours: int = wire(integer())
    cold_loads: int = wire(integer())
    bytes: int = wire(integer())
    start: str | None = wire(optional(_str), None)
    start_phases: list | None = wire(optional(array(
        fixed((_str, "phase"), (_number, "seconds")), "start phase", 16,
        "start_phases holds more than 16 phases")), None)
    problem: str | None = wire(optional(_str), None)

    def __post_init__(self) -> None:
        for name in ("start", "problem"):
            text = getattr(self, name)
            if isinstance(text, str):
                object.__setattr__(self, name, clip(text))


@dataclass(frozen=True)
class StatusReply(Message):
    """What a node says about itself and its peers (`segsync status`). Open like
    PeerStatus: unknown keys are ignored, later fields must be optional."""

    TYPE: ClassVar[str] = "status"
    OPEN: ClassVar[bool] = True
    node: str = wire(_str)
    url: str = wire(_str)
    started_at: float = wire(_number)
    time: float = wire(_number)  # the node's clock: ages are computed against it
    segments: int = wire(integer())
    peers: list = wire(records(PeerStatus, limits.MAX_STATUS_PEERS))
    peer_sources: list | None = wire(
        optional(records(PeerSourceStatus, limits.MAX_PEER_SOURCES)), None)
    scrub: ScrubStatus | None = wire(optional(record(ScrubStatus)), None)
    # downloader-aware push (absent from older nodes): is it on, offers this node
    # answered "later", deferred segments its downloader then wrote, holes push filled
    defer_push: bool | None = wire(optional(_bool), None)
    deferred_offers: int | None = wire(optional(integer()), None)
    deferral_saved: int | None = wire(optional(integer()), None)
    holes_filled_by_push: int | None = wire(optional(integer()), None)
    recorded_pairs: list | None = wire(
        optional(records(RecordedPairStatus, limits.MAX_STATUS_RECORDED_PAIRS)), None)
    tls: TlsStatus | None = wire(optional(record(TlsStatus)), None)  # None: plain http
    bandwidth: list | None = wire(optional(records(BandwidthStatus, 2)), None)
    index: IndexStatus | None = wire(optional(record(IndexStatus)), None)
    # chat batches and extras files held (absent from nodes before file sets)
    chat_batches: int | None = wire(optional(integer()), None)
    chat_tombstones: int | None = wire(optional(integer()), None)
    extras_files: int | None = wire(optional(integer()), None)


# ---- file sets: chat batches and extras files (protocol/filesets/) ----

def _set_kind(value: Any, what: str) -> str:
    return one_of(fs.KINDS)(value, what)


def _check_set_key(values: dict) -> None:
    try:
        fs.check_set(values["kind"], values["key"])
    except FileNameError as e:
        raise ProtocolError(f"file set: {e}") from None


def _bucket(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 16:
        raise ProtocolError(f"{what} must be a short string")
    return value


@dataclass(frozen=True)
class SetDigestsRequest(_HourRange, Message):
    """Top level for file sets: every chat and extras set (chat hours within range)."""

    TYPE: ClassVar[str] = "set_digests_request"
    first_hour: str = wire(_hour)
    last_hour: str = wire(_hour)


@dataclass(frozen=True)
class SetDigests(Message):
    """`sets`: [[kind, key, entries, digest over its bucket digests], ...]."""

    TYPE: ClassVar[str] = "set_digests"
    sets: list = wire(array(
        fixed((_set_kind, "kind"), (_str, "key"), (integer(), "entries"),
              (_digest, "set digest")),
        "set", fs.MAX_SETS, "too many sets"))

    @classmethod
    def check_across(cls, values: dict) -> None:
        for kind, key, _, _ in values["sets"]:
            _check_set_key({"kind": kind, "key": key})


@dataclass(frozen=True)
class BucketDigestsRequest(_HourRange, Message):
    TYPE: ClassVar[str] = "bucket_digests_request"
    kind: str = wire(_set_kind)
    key: str = wire(_str)
    first_hour: str = wire(_hour)
    last_hour: str = wire(_hour)

    @classmethod
    def check_across(cls, values: dict) -> None:
        _check_set_key(values)
        _hour_range(values["first_hour"], values["last_hour"])


@dataclass(frozen=True)
class BucketDigests(Message):
    """`buckets`: [[bucket, entries, digest], ...] for the set's non-empty buckets."""

    TYPE: ClassVar[str] = "bucket_digests"
    kind: str = wire(_set_kind)
    key: str = wire(_str)
    buckets: list = wire(array(
        fixed((_bucket, "bucket"), (integer(), "entries"), (_digest, "bucket digest")),
        "bucket", limits.MAX_HOUR_RANGE + 1, "too many buckets"))

    @classmethod
    def check_across(cls, values: dict) -> None:
        _check_set_key(values)


@dataclass(frozen=True)
class EntriesRequest(Message):
    """The entries of some buckets of a set, in path order, after `after` ("": from
    the start): a reply that stops short (`complete` false) is continued so."""

    TYPE: ClassVar[str] = "entries_request"
    kind: str = wire(_set_kind)
    key: str = wire(_str)
    buckets: list = wire(array(_bucket, "bucket", fs.MAX_ENTRY_BUCKETS,
                               f"buckets must name 1 to {fs.MAX_ENTRY_BUCKETS} buckets",
                               min_items=1))
    after: str = wire(_str)

    @classmethod
    def check_across(cls, values: dict) -> None:
        _check_set_key(values)


@dataclass(frozen=True)
class Entries(Message):
    """`entries`: [[path within the set, size], ...], sorted by path; every path a
    replicable entry of the set (a hostile one makes the whole reply invalid)."""

    TYPE: ClassVar[str] = "entries"
    kind: str = wire(_set_kind)
    key: str = wire(_str)
    entries: list = wire(array(
        fixed((_str, "path"), (integer(0, fs.MAX_FILE_BYTES), "size")),
        "entry", fs.MAX_ENTRIES, "too many entries"))
    complete: bool = wire(_bool)

    @classmethod
    def check_across(cls, values: dict) -> None:
        _check_set_key(values)
        for rel, _ in values["entries"]:
            try:
                fs.check_entry(values["kind"], values["key"], rel)
            except FileNameError as e:
                raise ProtocolError(f"entry: {e}") from None


class _SetPath:
    """Mixin: `path` is a replicable entry of the set (kind, key)."""

    @classmethod
    def check_across(cls, values: dict) -> None:
        _check_set_key(values)
        try:
            fs.check_entry(values["kind"], values["key"], values["path"])
        except FileNameError as e:
            raise ProtocolError(f"path: {e}") from None


@dataclass(frozen=True)
class FileOffer(_SetPath, Message):
    """'I have this chat batch or extras file; do you want it?' (reply: OfferReply)."""

    TYPE: ClassVar[str] = "file_offer"
    kind: str = wire(_set_kind)
    key: str = wire(_str)
    path: str = wire(_str)
    size: int = wire(integer(0, fs.MAX_FILE_BYTES))


@dataclass(frozen=True)
class FileFetchRequest(Message):
    """'Send me these files of one set in one response' (small files, a catch-up)."""

    TYPE: ClassVar[str] = "file_fetch_request"
    kind: str = wire(_set_kind)
    key: str = wire(_str)
    paths: list = wire(array(_str, "path", fs.MAX_BATCH_FILES,
                             f"paths must hold 1 to {fs.MAX_BATCH_FILES} paths",
                             min_items=1))

    @classmethod
    def check_across(cls, values: dict) -> None:
        _check_set_key(values)
        for rel in values["paths"]:
            try:
                fs.check_entry(values["kind"], values["key"], rel)
            except FileNameError as e:
                raise ProtocolError(f"path: {e}") from None


@dataclass(frozen=True)
class FileItem(Message):
    """Frame header of a file batch: `size` bytes of `path` follow, hashing to
    `sha256` (raw 32 bytes)."""

    TYPE: ClassVar[str] = "file_item"
    path: str = wire(_str)
    size: int = wire(integer(0, fs.MAX_FILE_BYTES))
    sha256: bytes = wire(_digest)


@dataclass(frozen=True)
class FileMissing(Message):
    """Frame header of a file batch: `path` is not sent (gone, or over the reply's size)."""

    TYPE: ClassVar[str] = "file_missing"
    path: str = wire(_str)
    reason: str = wire(_str)


@dataclass(frozen=True)
class Error(Message):
    """Every 4xx/5xx body on /v1: a machine code and a sentence for humans."""

    TYPE: ClassVar[str] = "error"
    code: str = wire(_str)
    message: str = wire(_str)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Offer, OfferReply, OfferLater, Tombstone, Ack, PairDigestsRequest, PairDigests,
        HourDigestsRequest, HourDigests, ListingRequest, Listing, StatusRequest, Error,
        FetchRequest, FetchItem, FetchMissing, StatusReply,
        SetDigestsRequest, SetDigests, BucketDigestsRequest, BucketDigests, EntriesRequest,
        Entries, FileOffer, FileFetchRequest, FileItem, FileMissing,
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
    `MAX_DEPTH`, any container that declares more items than bytes remain, and
    containers that declare more than `MAX_ITEMS` items in all (which also bounds
    this walk).
    """
    n = len(view)
    pos = 0
    pending = [1]  # items still expected at each open level; the root is one item
    declared = 1
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
        declared += count
        if declared > limits.MAX_ITEMS:
            raise ProtocolError(f"message holds more than {limits.MAX_ITEMS} items")
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
