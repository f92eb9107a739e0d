"""Wire messages: round trips, and strict, bounded decoding of untrusted bytes."""

from __future__ import annotations

import dataclasses
import string
import time
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import endpoints, limits
from protocol.digests import hours_between
from protocol.errors import ProtocolError
from protocol.messages import (
    ACK_STATUSES,
    MAX_RETRY_AFTER,
    MESSAGE_TYPES,
    OFFER_STATUSES,
    Ack,
    BandwidthStatus,
    Error,
    FetchItem,
    FetchMissing,
    FetchRequest,
    HourDigests,
    HourDigestsRequest,
    Listing,
    ListingRequest,
    Message,
    Offer,
    OfferLater,
    OfferReply,
    PairDigests,
    PairDigestsRequest,
    PeerSourceStatus,
    PeerStatus,
    Record,
    ScrubStatus,
    RecordedPairStatus,
    StatusReply,
    StatusRequest,
    TlsStatus,
    Tombstone,
    clip,
    decode,
    encode,
    unpack_bounded,
)
from protocol.names import Kind, parse_path

HASH = "7IS92rssMzoSBQDIevHStbTNy-URRV3Vw-jzZ6pwOZM"
HOUR = "2019-11-13T02"
SEGMENT_FILE = f"45:51.608000-2.0-full-{HASH}.ts"
TOMBSTONE_FILE = f"45:51.608000-2.0-full-{HASH}.tombstone"
SEGMENT_PATH = f"desertbus/source/{HOUR}/{SEGMENT_FILE}"
TOMBSTONE_PATH = f"desertbus/source/{HOUR}/{TOMBSTONE_FILE}"
D1, D2 = bytes(range(32)), bytes(range(32, 64))
BIG = limits.MAX_REPLY_BYTES


def examples() -> list[Message]:
    """At least one valid instance of every message type."""
    return [
        Offer(SEGMENT_PATH, 1234567),
        Offer(SEGMENT_PATH, 0),
        Offer(SEGMENT_PATH, limits.MAX_SEGMENT_BYTES),
        *(OfferReply(s) for s in OFFER_STATUSES),
        OfferLater(1.0),
        OfferLater(MAX_RETRY_AFTER),
        Tombstone(TOMBSTONE_PATH),
        *(Ack(s) for s in ACK_STATUSES),
        PairDigestsRequest("2019-11-13T00", "2019-11-13T05"),
        PairDigestsRequest(HOUR, HOUR),
        PairDigests("2019-11-13T00", "2019-11-13T05", []),
        PairDigests(
            "2019-11-13T00", "2019-11-13T05",
            [("desertbus", "source", D1), ("desertbus", "480p", D2)],
        ),
        HourDigestsRequest("desertbus", "source", "2019-11-01T00", "2019-11-13T05"),
        HourDigests("desertbus", "source", []),
        HourDigests("desertbus", "source", [("2019-11-13T00", D1), ("2019-11-13T01", D2)]),
        ListingRequest("desertbus", "source", HOUR),
        Listing("desertbus", "source", HOUR, []),
        Listing(
            "desertbus", "source", HOUR,
            [SEGMENT_FILE, TOMBSTONE_FILE, f"00:00.000000-2.002-suspect-{HASH}.ts",
             f"00:02.002000-1.5-partial-{HASH}.ts"],
        ),
        StatusRequest(),
        Error("bad_request", "that was not a segment path"),
        Error("", ""),
        FetchRequest([SEGMENT_PATH]),
        FetchRequest([SEGMENT_PATH] * limits.MAX_FETCH_PATHS),
        FetchItem(SEGMENT_PATH, 0),
        FetchItem(SEGMENT_PATH, limits.MAX_SEGMENT_BYTES),
        FetchMissing(SEGMENT_PATH, "not_found"),
        *fileset_examples(),
    ]


CHAT_REL = "2026-01-01T00/12:00-" + "A" * 42 + "A.json"


def fileset_examples() -> list[Message]:
    from protocol import messages as mm
    return [
        mm.SetDigestsRequest("2026-01-01T00", "2026-01-02T00"),
        mm.SetDigests([("chat", "desertbus", 3, b"d" * 32), ("extras", "emotes", 0, b"e" * 32)]),
        mm.BucketDigestsRequest("extras", "media", "2026-01-01T00", "2026-01-01T00"),
        mm.BucketDigests("chat", "desertbus", [("2026-01-01T00", 2, b"x" * 32)]),
        mm.EntriesRequest("extras", "emotes", ["00", "ff"], ""),
        mm.Entries("extras", "emotes", [("123/dark-1.0", 400), ("a b/ü.png", 0)], True),
        mm.Entries("chat", "desertbus", [(CHAT_REL, 10)], False),
        mm.FileOffer("chat", "desertbus", CHAT_REL, 10),
        mm.FileFetchRequest("extras", "media", ["x/y.metadata.json"]),
        mm.FileItem("x/y", 3, b"h" * 32),
        mm.FileMissing("x/y", "not_found"),
    ]


def status_examples() -> list[StatusReply]:
    """The open status reply (unknown keys ignored, so not in `examples()`)."""
    return [
        StatusReply("a", "http://127.0.0.1:8200", 1_700_000_000.5, 1_700_000_090.25, 0, []),
        StatusReply("node-b", "http://b:8200", 10, 20, 12, [
            PeerStatus("http://a:8200", queue_depth=3, last_push=15.5, push_error=None,
                       push_dropped=0, last_round=12.0, round_ok=True, round_error=None,
                       missing=0, reachable=True, reach_error=None),
            PeerStatus("http://c:8200", queue_depth=0, last_push=None,
                       push_error="http://c:8200: ConnectError: refused", push_dropped=7,
                       last_round=None, round_ok=False, round_error="boom", missing=None,
                       reachable=False, reach_error="http://c:8200: ConnectError: refused"),
            PeerStatus("http://d:8200"),
        ]),
        StatusReply("node-c", "http://c:8200", 10, 20, 12, [], scrub=ScrubStatus(
            checked=10, bytes=2_000_000, rotten=2, healed=1, lost=1,
            lost_paths=[SEGMENT_PATH], last_full_pass=5.0, pass_started=15.0,
            position=SEGMENT_PATH)),
        StatusReply("e", "http://e:8200", 10, 20, 3, [
            PeerStatus("http://a:8200", name="a", push_deferred=4)],
            defer_push=True, deferred_offers=12, deferral_saved=10, holes_filled_by_push=2,
            recorded_pairs=[RecordedPairStatus("desertbus", "source", True, True, 15.5),
                            RecordedPairStatus("desertbus", "480p", True, False, None)]),
        StatusReply("c", "https://c:8200", 10, 20, 0, [], tls=TlsStatus(
            "/etc/segsync/tls/node.crt", subject="CN=c", not_after=1_800_000_000.0,
            loaded_at=15.0, problem=None, reload_error="not a usable pair")),
        StatusReply("f", "http://f:8200", 10, 20, 5, [], chat_batches=20, chat_tombstones=1,
                    extras_files=50_000),
        StatusReply("g", "http://g:8200", 10, 20, 0, [], bandwidth=[
            BandwidthStatus("upload", limit=20e6, live_rate=150_000.0, catchup_rate=19.8e6,
                            live_bytes=3_000_000, catchup_bytes=900_000_000,
                            live_waited=0.5, catchup_waited=120.25, live_waiting=0,
                            catchup_waiting=5, problem="max-upload-rate must be >= 0"),
            BandwidthStatus("download")]),
    ]


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def obj_of(message: Message) -> dict:
    return msgpack.unpackb(encode(message), raw=False)


def rejects(data, *fragments: str, **kwargs) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(data, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return info.value


def decodes_or_protocol_error(data, **kwargs) -> None:
    """The contract of decode: a Message, or ProtocolError; nothing else, ever."""
    try:
        message = decode(data, **kwargs)
    except ProtocolError:
        return
    assert isinstance(message, Message)
    assert type(message) in MESSAGE_TYPES.values()


# ---- round trips ----

def test_examples_cover_every_message_type():
    assert {type(m) for m in examples() + status_examples()} == set(MESSAGE_TYPES.values())
    for type_name, cls in MESSAGE_TYPES.items():
        assert cls.TYPE == type_name


@pytest.mark.parametrize("message", examples(), ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message):
    data = encode(message)
    assert isinstance(data, bytes)
    decoded = decode(data, max_bytes=BIG)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode(decoded) == data
    assert decode(data, expect=type(message), max_bytes=BIG) == message


@pytest.mark.parametrize("message", examples(), ids=lambda m: type(m).__name__)
def test_wire_form_is_a_versioned_map(message):
    obj = obj_of(message)
    assert obj["v"] == limits.PROTOCOL_VERSION == 1
    assert obj["type"] == message.TYPE


def test_decode_accepts_bytearray_and_memoryview():
    data = encode(Offer(SEGMENT_PATH, 10))
    assert decode(bytearray(data)) == Offer(SEGMENT_PATH, 10)
    assert decode(memoryview(data)) == Offer(SEGMENT_PATH, 10)
    assert decode(memoryview(b"xx" + data)[2:]) == Offer(SEGMENT_PATH, 10)


def test_offer_and_tombstone_expose_their_segment():
    segment, _ = parse_path(SEGMENT_PATH)
    assert Offer(SEGMENT_PATH, 5).segment == segment
    assert Tombstone(TOMBSTONE_PATH).segment == segment


def test_expect_tuple():
    data = encode(Ack("stored"))
    assert decode(data, expect=(Offer, Ack)) == Ack("stored")


def test_expect_mismatch_is_rejected():
    rejects(encode(Offer(SEGMENT_PATH, 1)), "expected ack, got offer", expect=Ack)
    rejects(encode(StatusRequest()), "expected offer or tombstone", expect=(Offer, Tombstone))


# ---- version, type, shape ----

@pytest.mark.parametrize("version", [0, 2, -1, 2**40, "1", b"1", None, True, 1.0, [1]])
def test_rejects_wrong_version(version):
    obj = obj_of(StatusRequest())
    obj["v"] = version
    rejects(pack(obj), "unsupported protocol version")


def test_rejects_missing_version():
    rejects(pack({"type": "status_request"}), "unsupported protocol version None")


@pytest.mark.parametrize("type_name", ["nope", "", "Offer", "OFFER", 1, None, b"offer", ["offer"]])
def test_rejects_unknown_type(type_name):
    rejects(pack({"v": 1, "type": type_name}), "unknown message type")


def test_rejects_missing_type():
    rejects(pack({"v": 1}), "unknown message type None")


@pytest.mark.parametrize("obj", [[], [1, "offer"], 1, "offer", None, b"\x00", 1.5, True])
def test_rejects_non_map(obj):
    rejects(pack(obj), "must be a map")


@pytest.mark.parametrize("message", [m for m in examples() if obj_of(m).keys() - {"v", "type"}],
                         ids=lambda m: type(m).__name__)
def test_rejects_each_missing_field(message):
    full = obj_of(message)
    for name in set(full) - {"v", "type"}:
        obj = dict(full)
        del obj[name]
        rejects(pack(obj), "missing fields", name, max_bytes=BIG)


@pytest.mark.parametrize("message", examples(), ids=lambda m: type(m).__name__)
def test_rejects_extra_field(message):
    obj = obj_of(message)
    obj["extra"] = 1
    rejects(pack(obj), "unexpected fields: extra", max_bytes=BIG)


def test_rejects_bytes_key_as_extra_field():
    obj = obj_of(StatusRequest())
    obj[b"path"] = "x"
    rejects(pack(obj), "unexpected fields")


@pytest.mark.parametrize("key", [1, None, 1.5, True])
def test_rejects_non_string_map_keys(key):
    rejects(pack({"v": 1, "type": "status_request", key: 1}), "malformed msgpack")


def test_rejects_trailing_bytes():
    rejects(encode(StatusRequest()) + b"\xc0", "malformed msgpack")


def test_rejects_truncated():
    data = encode(Offer(SEGMENT_PATH, 1))
    for cut in range(len(data)):
        rejects(data[:cut])


@pytest.mark.parametrize("value", ["x", 1, None, [b"x"]])
def test_rejects_non_bytes_input(value):
    rejects(value, "must be bytes")


# ---- wrong field types ----

def with_field(base: Message, /, **changes) -> bytes:
    obj = obj_of(base)
    obj.update(changes)
    return pack(obj)


OFFER = Offer(SEGMENT_PATH, 100)
PAIRS = PairDigests("2019-11-13T00", "2019-11-13T05", [("desertbus", "source", D1)])
HOURS = HourDigests("desertbus", "source", [("2019-11-13T00", D1)])
LISTING = Listing("desertbus", "source", HOUR, [SEGMENT_FILE])


@pytest.mark.parametrize(
    "data, fragment",
    [
        (with_field(OFFER, size=True), "size must be an integer"),
        (with_field(OFFER, size=False), "size must be an integer"),
        (with_field(OFFER, size=1.0), "size must be an integer"),
        (with_field(OFFER, size="100"), "size must be an integer"),
        (with_field(OFFER, size=None), "size must be an integer"),
        (with_field(OFFER, size=-1), "size must be an integer"),
        (with_field(OFFER, size=limits.MAX_SEGMENT_BYTES + 1), "size must be an integer"),
        (with_field(OFFER, size=2**64 - 1), "size must be an integer"),
        (with_field(OFFER, path=b"a/b/c/d.ts"), "path must be a string"),
        (with_field(OFFER, path=None), "path"),
        (with_field(OFFER, path=[SEGMENT_PATH]), "path"),
        (with_field(OfferReply("want"), status=b"want"), "status must be one of"),
        (with_field(OfferReply("want"), status="stored"), "status must be one of"),
        (with_field(OfferReply("want"), status=["want"]), "status must be one of"),
        (with_field(OfferReply("want"), status="later"), "status must be one of"),
        (with_field(OfferReply("want"), retry_after=1.0), "unexpected fields: retry_after"),
        (with_field(OfferLater(1.0), retry_after=0), "retry_after must be a number"),
        (with_field(OfferLater(1.0), retry_after=-1), "retry_after must be a number"),
        (with_field(OfferLater(1.0), retry_after=MAX_RETRY_AFTER * 2), "retry_after must be"),
        (with_field(OfferLater(1.0), retry_after=True), "retry_after must be a number"),
        (with_field(OfferLater(1.0), retry_after="1"), "retry_after must be a number"),
        (with_field(OfferLater(1.0), retry_after=float("nan")), "retry_after must be"),
        (with_field(OfferLater(1.0), status="want"), "unexpected fields: status"),
        (with_field(Ack("stored"), status="want"), "status must be one of"),
        (with_field(Ack("stored"), status=1), "status must be one of"),
        (with_field(Error("a", "b"), code=1), "code must be a string"),
        (with_field(Error("a", "b"), message=b"b"), "message must be a string"),
        (with_field(PAIRS, pairs={"a": 1}), "pairs must be an array"),
        (with_field(PAIRS, pairs="abc"), "pairs must be an array"),
        (with_field(PAIRS, pairs=[["desertbus", "source"]]), "array of 3 items"),
        (with_field(PAIRS, pairs=[["desertbus", "source", D1, 1]]), "array of 3 items"),
        (with_field(PAIRS, pairs=["desertbus"]), "array of 3 items"),
        (with_field(PAIRS, pairs=[["desertbus", "source", D1[:31]]]), "32 bytes"),
        (with_field(PAIRS, pairs=[["desertbus", "source", D1.hex()]]), "32 bytes"),
        (with_field(PAIRS, pairs=[[b"desertbus", "source", D1]]), "channel must be a string"),
        (with_field(PAIRS, pairs=[["desertbus", 1, D1]]), "quality must be a string"),
        (with_field(PAIRS, first_hour=2019), "first_hour"),
        (with_field(HOURS, hours=[["2019-11-13T00"]]), "array of 2 items"),
        (with_field(HOURS, hours=[["2019-11-13T00", D1 + b"x"]]), "32 bytes"),
        (with_field(HOURS, hours=[[b"2019-11-13T00", D1]]), "hour"),
        (with_field(HOURS, hours=None), "hours must be an array"),
        (with_field(HOURS, channel=None), "channel must be a string"),
        (with_field(LISTING, names="abc"), "names must be an array"),
        (with_field(LISTING, names=[SEGMENT_FILE[:40].encode()]), "name must be a string"),
        (with_field(LISTING, names=[1]), "name must be a string"),
        (with_field(LISTING, names=[[SEGMENT_FILE]]), "name must be a string"),
        (with_field(ListingRequest("a", "b", HOUR), hour=None), "hour"),
        (with_field(HourDigestsRequest("a", "b", HOUR, HOUR), last_hour=1.5), "last_hour"),
    ],
)
def test_rejects_wrong_field_types(data, fragment):
    rejects(data, fragment, max_bytes=BIG)


# ---- invalid names and hours inside messages ----

@pytest.mark.parametrize(
    "data, fragment",
    [
        (with_field(OFFER, path=TOMBSTONE_PATH), "must name a segment"),
        (with_field(OFFER, path="/" + SEGMENT_PATH), "absolute"),
        (with_field(OFFER, path="../" + SEGMENT_PATH), "components"),
        (with_field(OFFER, path="../source/" + HOUR + "/" + SEGMENT_FILE), "channel"),
        (with_field(OFFER, path=SEGMENT_PATH.replace("full", "bogus")), "type"),
        (with_field(OFFER, path=SEGMENT_PATH.replace("2.0", "0")), "duration"),
        (with_field(OFFER, path=SEGMENT_PATH[:-2] + "N.ts"), "hash"),
        (with_field(OFFER, path=""), "components"),
        (with_field(Tombstone(TOMBSTONE_PATH), path=SEGMENT_PATH), "must name a tombstone"),
        (with_field(Tombstone(TOMBSTONE_PATH), path="a\\b/c/d/e"), "NUL"),
        (with_field(PairDigestsRequest(HOUR, HOUR), first_hour="2019-13-01T00"), "first_hour"),
        (with_field(PairDigestsRequest(HOUR, HOUR), last_hour="2019-11-13T24"), "last_hour"),
        (with_field(PairDigestsRequest(HOUR, HOUR), first_hour="2019-11-13 02"), "first_hour"),
        (with_field(PairDigestsRequest(HOUR, HOUR), first_hour="2019-11-13T03"), "before"),
        (with_field(HourDigestsRequest("a", "b", HOUR, HOUR), first_hour="2019-11-13T03"), "before"),
        (with_field(HourDigestsRequest("a", "b", HOUR, HOUR), channel=".."), "channel"),
        (with_field(HourDigestsRequest("a", "b", HOUR, HOUR), quality="a/b"), "quality"),
        (with_field(HourDigestsRequest("a", "b", HOUR, HOUR), channel=""), "channel is empty"),
        (with_field(PAIRS, pairs=[["desertbus", ".hidden", D1]]), "quality"),
        (with_field(PAIRS, pairs=[["a\x00b", "source", D1]]), "channel"),
        (with_field(HOURS, hours=[["2019-11-13T25", D1]]), "hour"),
        (with_field(ListingRequest("a", "b", HOUR), channel="a\\b"), "channel"),
        (with_field(ListingRequest("a", "b", HOUR), hour="2019-11-13"), "hour"),
        (with_field(LISTING, names=[f"45:51.608000-2.0-temp-{HASH}.ts"]), "temp"),
        (with_field(LISTING, names=[SEGMENT_FILE.replace("full", "bogus")]), "listing name"),
        (with_field(LISTING, names=["../../../etc/passwd"]), "listing name"),
        (with_field(LISTING, names=[f"x/45:51.608000-2.0-full-{HASH}.ts"]), "listing name"),
        (with_field(LISTING, names=[SEGMENT_FILE, "README.txt"]), "listing name"),
        (with_field(LISTING, hour="2019-02-30T00"), "hour"),
        (with_field(LISTING, channel="."), "channel"),
    ],
)
def test_rejects_invalid_names_and_hours(data, fragment):
    rejects(data, fragment, max_bytes=BIG)


def test_hour_range_limit():
    first = "2019-01-01T00"
    ok = PairDigestsRequest(first, "2020-12-31T00")  # within 2 * 366 days
    assert decode(encode(ok)) == ok
    # One hour more than the limit is rejected; exactly the limit is fine.
    hours = hours_between("2018-01-01T00", "2021-01-01T00")
    assert len(hours) > limits.MAX_HOUR_RANGE + 1
    last_ok = hours[-1 - limits.MAX_HOUR_RANGE]
    too_far = hours[-2 - limits.MAX_HOUR_RANGE]
    start = hours[-1]
    assert decode(encode(PairDigestsRequest(start, last_ok))) == PairDigestsRequest(start, last_ok)
    rejects(encode(PairDigestsRequest(start, too_far)), "hour range longer")
    rejects(encode(HourDigestsRequest("a", "b", start, too_far)), "hour range longer")


def test_too_many_pairs_and_hours():
    pairs = [["c", "q", D1]] * (limits.MAX_PAIRS + 1)
    rejects(with_field(PAIRS, pairs=pairs), "too many pairs", max_bytes=BIG)
    hours = [["2019-11-13T00", D1]] * (limits.MAX_HOUR_RANGE + 2)
    rejects(with_field(HOURS, hours=hours), "too many hours", max_bytes=BIG)


# ---- sizes and limits ----

def test_rejects_oversize_buffer():
    data = encode(Error("x", "y" * 100))
    assert decode(data, max_bytes=len(data)) == Error("x", "y" * 100)
    rejects(data, "larger than", max_bytes=len(data) - 1)
    rejects(b"\x00" * (limits.MAX_REQUEST_BYTES + 1), "larger than")
    rejects(memoryview(b"\x00" * 100), "larger than", max_bytes=99)


def test_default_max_is_request_limit():
    big = Listing("desertbus", "source", HOUR, [SEGMENT_FILE] * 1000)
    data = encode(big)
    assert len(data) > limits.MAX_REQUEST_BYTES
    rejects(data, "larger than")
    assert decode(data, max_bytes=limits.MAX_REPLY_BYTES) == big


def test_string_length_limit():
    ok = Error("code", "m" * limits.MAX_STRING)
    assert decode(encode(ok)) == ok
    rejects(encode(Error("code", "m" * (limits.MAX_STRING + 1))), "malformed msgpack")


def test_binary_length_limit():
    rejects(with_field(HOURS, hours=[["2019-11-13T00", b"\x00" * (limits.MAX_BINARY + 1)]]),
            "malformed msgpack")
    assert unpack_bounded(pack(b"\x00" * limits.MAX_BINARY), 1000) == b"\x00" * limits.MAX_BINARY


def test_array_length_limit():
    assert len(unpack_bounded(pack([0] * limits.MAX_ARRAY), BIG)) == limits.MAX_ARRAY
    rejects(with_field(LISTING, names=[0] * (limits.MAX_ARRAY + 1)), "malformed msgpack",
            max_bytes=BIG)


def test_map_length_limit():
    obj = obj_of(StatusRequest())
    obj.update({f"k{i}": i for i in range(limits.MAX_MAP - 2)})
    assert len(unpack_bounded(pack(obj), BIG)) == limits.MAX_MAP
    obj["one_more"] = 0
    rejects(pack(obj), "malformed msgpack")


def test_ext_types_are_rejected_or_harmless():
    rejects(with_field(OFFER, size=msgpack.ExtType(1, b"abc")), max_bytes=BIG)
    rejects(pack({"v": 1, "type": "status_request", "t": msgpack.Timestamp(1, 2)}))


def test_too_many_containers():
    obj = obj_of(LISTING)
    obj["names"] = [[] for _ in range(limits.MAX_ARRAY)]
    obj["more"] = [[] for _ in range(limits.MAX_CONTAINERS - limits.MAX_ARRAY + 10)]
    rejects(pack(obj), "too many arrays or maps", max_bytes=BIG)


def quickly_rejected(data: bytes, *fragments: str, max_bytes: int = BIG) -> None:
    """Rejected with ProtocolError, fast, and without allocating much memory. Fast is
    CPU time of this process: other work on a busy machine does not count."""
    started = time.process_time()
    rejects(data, *fragments, max_bytes=max_bytes)
    assert time.process_time() - started < 0.5
    tracemalloc.start()
    try:
        rejects(data, *fragments, max_bytes=max_bytes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, f"decoding {len(data)} bytes peaked at {peak} bytes"


def test_100k_empty_arrays_rejected_quickly():
    quickly_rejected(pack([[] for _ in range(100_000)]))
    quickly_rejected(b"\x90" * 100_000)  # not one message: the rest is extra data
    # As fields of a message: within the array limit, beyond the container budget.
    quickly_rejected(b"\x83\xa1v\x01\xa4type\xa7listing\xa1a" + b"\xdd\x00\x01\x86\xa0"
                     + b"\x90" * 100_000)
    obj = {"v": 1, "type": "listing", "a": [[]] * 50_000, "b": [[]] * 50_000}
    quickly_rejected(pack(obj), "too many arrays or maps")


def test_too_many_items_rejected_quickly():
    """Every array within MAX_ARRAY and a few containers, but 4 MB of items in all:
    msgpack would give each an 8-byte slot (33 MB) before any check saw the whole."""
    wide = b"\xdc\x00\x50" + (b"\xdc\xc3\x50" + b"\xc0" * limits.MAX_ARRAY) * 80
    assert len(wide) <= BIG
    quickly_rejected(wide, f"more than {limits.MAX_ITEMS} items")
    # the largest messages a node sends stay well within it
    names = [SEGMENT_FILE] * limits.MAX_ARRAY
    assert decode(with_field(LISTING, names=names), Listing, BIG).names == names
    hours = [(HOUR, bytes(32))] * (limits.MAX_HOUR_RANGE + 1)
    assert 3 * len(hours) < limits.MAX_ITEMS
    fat = b"\x83\xa1v\x01\xa4type\xa7listing\xa1a" + pack([[h, d] for h, d in hours])
    assert unpack_bounded(fat, BIG)["a"][-1] == [HOUR, bytes(32)]


def test_deep_nesting_rejected_quickly():
    quickly_rejected(b"\x91" * 100_000 + b"\xc0")
    quickly_rejected(b"\x81\xa1k" * 30_000 + b"\xc0")
    depth = limits.MAX_DEPTH
    assert unpack_bounded(b"\x91" * depth + b"\xc0", BIG) is not None
    with pytest.raises(ProtocolError, match="deeper"):
        unpack_bounded(b"\x91" * (depth + 1) + b"\xc0", BIG)


def test_nested_huge_array_headers_do_not_allocate():
    # Each header declares 50,000 items (msgpack allocates the slots up front):
    # a few KB must not turn into tens of MB.
    quickly_rejected(b"\xdd\x00\x00\xc3\x50" * 1000, max_bytes=limits.MAX_REQUEST_BYTES)
    quickly_rejected(b"\xdc\xc3\x50" * 20_000)
    quickly_rejected(b"\xdf\x00\x00\x00\x10" * 1000)


# ---- hypothesis ----

@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_decode_or_protocol_error(data):
    decodes_or_protocol_error(data, max_bytes=BIG)


@st.composite
def mutated_encodings(draw) -> bytes:
    data = bytearray(encode(draw(st.sampled_from(examples()))))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x90, 0xA0, 0xC0, 0xC1, 0xC2, 0xC3,
                                              0xC4, 0xC7, 0xCA, 0xCB, 0xCC, 0xCF, 0xD3, 0xD4,
                                              0xD9, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF,
                                              draw(st.integers(0, 255))]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 4))]
        else:
            del data[pos:]
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_encodings())
def test_mutated_encodings_decode_or_protocol_error(data):
    decodes_or_protocol_error(data, max_bytes=BIG)
    decodes_or_protocol_error(data)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=40),
)
msgpack_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.text(max_size=6), children, max_size=6),
    ),
    max_leaves=40,
)


def depth_of(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(msgpack_values)
def test_unpack_bounded_agrees_with_msgpack_within_limits(value):
    data = pack(value)
    if depth_of(value) <= limits.MAX_DEPTH:
        assert unpack_bounded(data, BIG) == msgpack.unpackb(data, raw=False)
    else:
        with pytest.raises(ProtocolError, match="deeper"):
            unpack_bounded(data, BIG)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "type", "path", "size", "status", "channel",
                                        "quality", "hour", "names", "hours", "pairs",
                                        "first_hour", "last_hour", "code", "message"]),
                       st.one_of(msgpack_values, st.sampled_from(
                           [1, SEGMENT_PATH, TOMBSTONE_PATH, HOUR, "desertbus", [SEGMENT_FILE],
                            *MESSAGE_TYPES]))))
def test_random_maps_decode_or_protocol_error(obj):
    decodes_or_protocol_error(pack(obj), max_bytes=BIG)
    obj = {**obj, "v": 1}
    decodes_or_protocol_error(pack(obj), max_bytes=BIG)


components = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
hours = st.datetimes().map(lambda t: f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}")


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.builds(HourDigests, components, components,
              st.lists(st.tuples(hours, st.binary(min_size=32, max_size=32)), max_size=20)),
    st.builds(PairDigests, hours, hours,
              st.lists(st.tuples(components, components, st.binary(min_size=32, max_size=32)),
                       max_size=20)),
    st.builds(ListingRequest, components, components, hours),
    st.builds(Error, st.text(max_size=100), st.text(max_size=300)),
    st.builds(OfferReply, st.sampled_from(OFFER_STATUSES)),
    st.builds(OfferLater, st.floats(0.001, MAX_RETRY_AFTER)),
))
def test_random_valid_messages_round_trip(message):
    assert decode(encode(message), max_bytes=BIG) == message


def test_protocol_error_is_value_error():
    assert issubclass(ProtocolError, ValueError)
    assert Kind.SEGMENT is not Kind.TOMBSTONE


# ---- messages declared once: the generic decoder ----

RECORD_TYPES = [*MESSAGE_TYPES.values(), PeerStatus, ScrubStatus, BandwidthStatus]
# Encodings from before messages were declared once: the wire form must not move.
WIRE = [
    (Offer(SEGMENT_PATH, 1234567), "84a17601a474797065a56f66666572a470617468d963646573657274627573"
    "2f736f757263652f323031392d31312d31335430322f34353a35312e3630383030302d322e302d66756c6c2d"
    "37495339327273734d7a6f5342514449657648537462544e792d555252563356772d6a7a5a3670774f5a4d2e"
    "7473a473697a65ce0012d687"),
    (Tombstone(TOMBSTONE_PATH), "83a17601a474797065a9746f6d6273746f6e65a470617468d96a64657365"
    "72746275732f736f757263652f323031392d31312d31335430322f34353a35312e3630383030302d322e302d"
    "66756c6c2d37495339327273734d7a6f5342514449657648537462544e792d555252563356772d6a7a5a3670"
    "774f5a4d2e746f6d6273746f6e65"),
    (PairDigests("2019-11-13T00", "2019-11-13T05", [("desertbus", "source", D1)]),
    "85a17601a474797065ac706169725f64696765737473aa66697273745f686f7572ad323031392d31312d3133"
    "543030a96c6173745f686f7572ad323031392d31312d3133543035a570616972739193a96465736572746275"
    "73a6736f75726365c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"),
    (FetchRequest([SEGMENT_PATH]), "83a17601a474797065ad66657463685f72657175657374a57061746873"
    "91d9636465736572746275732f736f757263652f323031392d31312d31335430322f34353a35312e36303830"
    "30302d322e302d66756c6c2d37495339327273734d7a6f5342514449657648537462544e792d555252563356"
    "772d6a7a5a3670774f5a4d2e7473"),
    (StatusRequest(), "82a17601a474797065ae7374617475735f72657175657374"),
    (Error("bad", "why"),
     "84a17601a474797065a56572726f72a4636f6465a3626164a76d657373616765a3776879"),
]


@pytest.mark.parametrize("message, wire", WIRE, ids=lambda v: type(v).__name__)
def test_wire_bytes_are_pinned(message, wire):
    assert encode(message).hex() == wire
    assert decode(bytes.fromhex(wire), max_bytes=BIG) == message


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
def test_every_field_declares_its_validator(cls):
    for f in dataclasses.fields(cls):
        assert callable(f.metadata.get("segsync.check")), (cls.__name__, f.name)


def every_field(messages):
    """(message, field name) for every declared field of every example."""
    return [(msg, f.name) for msg in messages for f in dataclasses.fields(msg)]


@pytest.mark.parametrize("message, name", every_field(examples() + status_examples()),
                         ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_each_field_rejects_a_map_and_a_too_long_string(message, name):
    rejects(with_field(message, **{name: {"x": 1}}), name, max_bytes=BIG)
    rejects(with_field(message, **{name: "x" * (limits.MAX_STRING + 1)}), "malformed msgpack",
            max_bytes=BIG)


def test_decoded_arrays_are_fresh_lists_of_the_declared_shape():
    pairs = decode(encode(PAIRS), max_bytes=BIG)
    assert pairs.pairs == [("desertbus", "source", D1)] and isinstance(pairs.pairs[0], tuple)
    hours = decode(encode(HOURS), max_bytes=BIG)
    assert hours.hours == [("2019-11-13T00", D1)] and isinstance(hours.hours[0], tuple)


def test_fetch_request_path_count():
    rejects(with_field(FetchRequest([SEGMENT_PATH]), paths=[]), "paths must hold 1 to")
    rejects(with_field(FetchRequest([SEGMENT_PATH]),
                       paths=[SEGMENT_PATH] * (limits.MAX_FETCH_PATHS + 1)),
            "paths must hold 1 to", max_bytes=BIG)
    rejects(with_field(FetchRequest([SEGMENT_PATH]), paths=[TOMBSTONE_PATH]),
            "path must name a segment")


# ---- the status reply: typed, and open to fields added later ----

@pytest.mark.parametrize("message", status_examples(), ids=lambda m: str(len(m.peers)))
def test_status_reply_round_trips(message):
    data = encode(message)
    decoded = decode(data, StatusReply, BIG)
    assert decoded == message
    assert all(type(p) is PeerStatus for p in decoded.peers)
    assert encode(decoded) == data


def test_status_reply_wire_form_is_the_map_readers_already_know():
    obj = obj_of(status_examples()[1])
    assert obj["v"] == 1 and obj["type"] == "status"
    assert set(obj) == {"v", "type", "node", "url", "started_at", "time", "segments", "peers",
                        "peer_sources", "scrub", "tls",
                        # downloader-aware push (optional: older readers ignore them)
                        "defer_push", "deferred_offers", "deferral_saved",
                        "holes_filled_by_push", "recorded_pairs",
                        # chat and extras counts (optional)
                        "chat_batches", "chat_tombstones", "extras_files",
                        "index",  # the archive index (issue 20: optional)
                        # bandwidth limits (optional: older readers ignore it)
                        "bandwidth"}
    assert obj["bandwidth"] is None  # a node that does not say (older, or a test part)
    assert obj["scrub"] is None  # a node without a scrub (added by issue 14: optional)
    assert obj["index"] is None
    assert obj["tls"] is None  # plain http
    assert obj["peers"][0] == {
        "url": "http://a:8200", "name": None, "kind": None, "queue_depth": 3, "last_push": 15.5, "push_error": None,
        "push_dropped": 0, "push_deferred": None, "last_round": 12.0, "round_ok": True,
        "round_error": None, "missing": 0, "reachable": True, "reach_error": None,
    }


def test_status_reply_bandwidth_is_optional_and_open():
    message = status_examples()[-1]
    obj = obj_of(message)
    assert obj["bandwidth"][1] == {
        "direction": "download", "limit": None, "live_rate": 0.0, "catchup_rate": 0.0,
        "live_bytes": 0, "catchup_bytes": 0, "live_waited": 0.0, "catchup_waited": 0.0,
        "live_waiting": 0, "catchup_waiting": 0, "problem": None}
    obj["bandwidth"][0]["added_later"] = 1
    obj["bandwidth"][1] = {"direction": "download"}  # fields added later are optional
    assert decode(pack(obj), StatusReply, BIG) == message
    obj["bandwidth"][1] = {"direction": "sideways"}
    rejects(pack(obj), "direction must be one of", expect=StatusReply, max_bytes=BIG)
    obj["bandwidth"] = [{"direction": "upload"}] * 3
    rejects(pack(obj), "more than 2", expect=StatusReply, max_bytes=BIG)


def test_status_reply_recorded_pairs_are_checked_and_bounded():
    message = next(s for s in status_examples() if s.recorded_pairs)
    obj = obj_of(message)
    assert obj["recorded_pairs"][1] == {"channel": "desertbus", "quality": "480p",
                                        "declared": True, "recording": False,
                                        "last_local": None}
    assert decode(pack(obj), StatusReply, BIG) == message
    obj["recorded_pairs"][0]["declared"] = "yes"
    rejects(pack(obj), "declared must be true or false", expect=StatusReply, max_bytes=BIG)
    obj["recorded_pairs"] = [{"channel": "c", "quality": "q", "declared": False,
                              "recording": True}] * (limits.MAX_STATUS_RECORDED_PAIRS + 1)
    rejects(pack(obj), f"more than {limits.MAX_STATUS_RECORDED_PAIRS}", expect=StatusReply,
            max_bytes=BIG)


def test_status_reply_ignores_unknown_keys():
    message = status_examples()[1]
    obj = obj_of(message)
    obj["database_error"] = "disk full"
    obj[b"bytes key"] = 1
    obj["peers"][0].update({"deferred": 4, "tls": {"verified": True}, "added_later": "a"})
    assert decode(pack(obj), StatusReply, BIG) == message


def test_status_reply_scrub_is_optional_and_open():
    obj = obj_of(SCRUBBED)
    del obj["scrub"]
    assert decode(pack(obj), StatusReply, BIG).scrub is None  # a node without a scrub
    obj = obj_of(SCRUBBED)
    obj["scrub"] = {"checked": 1, "bytes": 2, "rotten": 0, "healed": 0, "lost": 0,
                    "verified_at": 3.0}  # a later field: ignored
    scrub = decode(pack(obj), StatusReply, BIG).scrub
    assert scrub == ScrubStatus(1, 2, 0, 0, 0)
    assert scrub.lost_paths is None and scrub.position is None
    obj["scrub"] = {"checked": 1}
    rejects(pack(obj), "scrub: missing fields: bytes, rotten, healed, lost", max_bytes=BIG)


def test_status_reply_tls_map():
    """A TLS node's certificate as status shows it: open too, bad values refused."""
    message = status_examples()[4]
    obj = obj_of(message)
    assert obj["tls"] == {"cert": "/etc/segsync/tls/node.crt", "subject": "CN=c",
                          "not_after": 1_800_000_000.0, "loaded_at": 15.0, "problem": None,
                          "reload_error": "not a usable pair"}
    obj["tls"]["added_later"] = 1
    assert decode(pack(obj), StatusReply, BIG) == message
    del obj["tls"]  # an older node
    assert decode(pack(obj), StatusReply, BIG).tls is None
    rejects(pack(dict(obj, tls="on")), "tls must be a map", max_bytes=BIG)
    rejects(pack(dict(obj, tls={"subject": "CN=c"})), "tls: missing fields: cert", max_bytes=BIG)
    rejects(pack(dict(obj, tls={"cert": "x", "not_after": "soon"})),
            "not_after must be a number", max_bytes=BIG)
    long = TlsStatus("x", reload_error="e" * (limits.MAX_STRING + 10))
    assert len(long.reload_error.encode()) == limits.MAX_STRING


def test_status_reply_absent_optional_fields_are_none():
    obj = obj_of(status_examples()[0])
    obj["peers"] = [{"url": "http://x:1"}]
    (peer,) = decode(pack(obj), StatusReply, BIG).peers
    assert peer == PeerStatus("http://x:1")
    assert peer.queue_depth is None and peer.reachable is None and peer.reach_error is None


def test_status_reply_required_fields():
    full = obj_of(status_examples()[1])
    for name in ("node", "url", "started_at", "time", "segments", "peers"):
        obj = dict(full)
        del obj[name]
        rejects(pack(obj), "missing fields", name, max_bytes=BIG)
    obj = dict(full, peers=[{"queue_depth": 1}])
    rejects(pack(obj), "peers[0]: missing fields: url", max_bytes=BIG)


STATUS = status_examples()[1]
SCRUBBED = status_examples()[2]


def with_scrub(**changes) -> bytes:
    obj = obj_of(SCRUBBED)
    obj["scrub"].update(changes)
    return pack(obj)


def with_peer(**changes) -> bytes:
    obj = obj_of(STATUS)
    obj["peers"][1].update(changes)
    return pack(obj)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (with_field(STATUS, node=None), "node must be a string"),
        (with_field(STATUS, url=b"http://b"), "url must be a string"),
        (with_field(STATUS, started_at="10"), "started_at must be a number"),
        (with_field(STATUS, time=True), "time must be a number"),
        (with_field(STATUS, segments=-1), "segments must be an integer"),
        (with_field(STATUS, segments=1.5), "segments must be an integer"),
        (with_field(STATUS, peers={"url": "x"}), "peers must be an array"),
        (with_field(STATUS, peers=["http://a:8200"]), "peers[0] must be a map"),
        (with_field(STATUS, peers=[{"url": "u"}] * (limits.MAX_STATUS_PEERS + 1)),
         "peers holds more than"),
        (with_peer(url=None), "peers[1]: url must be a string"),
        (with_peer(queue_depth="3"), "peers[1]: queue_depth must be an integer"),
        (with_peer(push_dropped=-1), "peers[1]: push_dropped must be an integer"),
        (with_peer(missing=True), "peers[1]: missing must be an integer"),
        (with_peer(last_push="now"), "peers[1]: last_push must be a number"),
        (with_peer(last_round=[1]), "peers[1]: last_round must be a number"),
        (with_peer(round_ok=1), "peers[1]: round_ok must be true or false"),
        (with_peer(reachable="yes"), "peers[1]: reachable must be true or false"),
        (with_peer(push_error=1), "peers[1]: push_error must be a string"),
        (with_peer(round_error=b"boom"), "peers[1]: round_error must be a string"),
        (with_peer(reach_error=[]), "peers[1]: reach_error must be a string"),
        (with_peer(reach_error="x" * (limits.MAX_STRING + 1)), "malformed msgpack"),
        (with_field(SCRUBBED, scrub=[1]), "scrub must be a map"),
        (with_scrub(checked=-1), "scrub: checked must be an integer"),
        (with_scrub(lost="1"), "scrub: lost must be an integer"),
        (with_scrub(last_full_pass="then"), "scrub: last_full_pass must be a number"),
        (with_scrub(position="c/q/h/x.ts"), "scrub: position"),
        (with_scrub(lost_paths=[TOMBSTONE_PATH]), "scrub: lost_paths item must name a segment"),
        (with_scrub(lost_paths=[SEGMENT_PATH] * (limits.MAX_STATUS_LOST_PATHS + 1)),
         "scrub: lost_paths holds more than"),
    ],
)
def test_status_reply_rejects_bad_fields(data, fragment):
    rejects(data, fragment, max_bytes=BIG)


def test_closed_messages_still_refuse_unknown_keys():
    assert not any(cls.OPEN for cls in MESSAGE_TYPES.values() if cls is not StatusReply)
    assert StatusReply.OPEN and PeerStatus.OPEN
    assert issubclass(PeerStatus, Record) and not issubclass(PeerStatus, Message)
    assert "status" not in {t for t in MESSAGE_TYPES if t != StatusReply.TYPE}


# ---- endpoints declared once ----

def test_endpoint_paths_are_distinct_and_absolute():
    assert len(set(endpoints.ALL)) == len(endpoints.ALL)
    assert all(e.startswith("/") and not e.endswith("/") for e in endpoints.ALL)
    assert endpoints.segment_url(SEGMENT_PATH) == "/v1/segments/" + SEGMENT_PATH
    v1 = {e for e in endpoints.ALL if endpoints.is_v1(e)}
    assert v1 == {"/v1/offer", "/v1/tombstone", "/v1/pair-digests", "/v1/hour-digests",
                  "/v1/listing", "/v1/status", "/v1/fetch", "/v1/segments",
                  "/v1/set-digests", "/v1/bucket-digests", "/v1/entries", "/v1/file-offer",
                  "/v1/file-fetch", "/v1/file"}


@pytest.mark.parametrize("parts, expected", [
    (["healthz"], ("/healthz", [])),
    (["v1", "offer"], ("/v1/offer", [])),
    (["v1", "segments", "c", "q", HOUR, SEGMENT_FILE], ("/v1/segments", ["c", "q", HOUR,
                                                                         SEGMENT_FILE])),
    (["v1"], ("/v1/", [])),
    (["files", "c", "q"], ("/files", ["c", "q"])),
    ([], ("/", [])),
    ([""], ("/", [])),
    (["v1/offer"], ("", [])),  # '/v1%2foffer': one part, no endpoint
])
def test_split_endpoint(parts, expected):
    assert endpoints.split_endpoint(parts) == expected


def test_endpoint_labels_are_a_fixed_set():
    label = endpoints.endpoint_label
    assert label("/v1/segments/c/q/2026-01-01T00/x.ts") == "v1-segments"
    assert label("/v1/fetch") == "v1-fetch"
    assert label("/files/c/q") == "files"
    assert label("/segments/c/q/h/x.ts") == "segments"
    for odd in ("", "/", "/v1", "/v1/nope", "/x/../../etc", "/" + "a" * 5000, "/v1/fetch%00"):
        assert label(odd) == "other"
    labels = endpoints.ENDPOINT_LABELS
    assert {label(e) for e in endpoints.ALL} == labels and len(labels) == len(endpoints.ALL)
    assert {label("/" + e.replace("-", "/", 1)) for e in labels} == labels


def test_status_reply_peer_sources_round_trip_and_are_optional():
    sources = [
        PeerSourceStatus("file", where="/etc/segsync/peers", peers=3, ok=True, last_read=5.0),
        PeerSourceStatus("database", where="u@db:5432/wubloader", peers=2, ok=False,
                         error="nodes table at u@db:5432/wubloader: refused",
                         failing_since=7.5, last_read=5.0),
    ]
    reply = StatusReply("a", "http://a:1", 0, 1, 0, [], peer_sources=sources)
    decoded = decode(encode(reply), StatusReply, BIG)
    assert decoded == reply and all(type(s) is PeerSourceStatus for s in decoded.peer_sources)
    obj = obj_of(reply)
    obj["peer_sources"][0]["added_later"] = 1  # open, like the peers
    obj["peer_sources"].append({"source": "later-kind"})
    assert decode(pack(obj), StatusReply, BIG).peer_sources[2] == PeerSourceStatus("later-kind")
    del obj["peer_sources"]  # a node of an older version
    assert decode(pack(obj), StatusReply, BIG).peer_sources is None
    rejects(pack(dict(obj, peer_sources=[{"where": "x"}])), "peer_sources[0]", "missing fields",
            "source", max_bytes=BIG)
    rejects(pack(dict(obj, peer_sources=[{"source": "file", "ok": "yes"}])),
            "ok must be true or false", max_bytes=BIG)
    too_many = [{"source": "file"}] * (limits.MAX_PEER_SOURCES + 1)
    rejects(pack(dict(obj, peer_sources=too_many)), "more than", max_bytes=BIG)


def test_peer_source_status_texts_are_cut_to_stay_decodable():
    long = "x" * (limits.MAX_STRING + 10)
    source = PeerSourceStatus("file", where="/" + long, error=long)
    assert len(source.where) == len(source.error) == limits.MAX_STRING
    reply = StatusReply("a", "http://a:1", 0, 1, 0, [], peer_sources=[source])
    assert decode(encode(reply), StatusReply, BIG) == reply


def test_peer_status_errors_are_cut_to_stay_decodable():
    long = "http://c:8200: HTTP 400 bad_message: " + "m" * limits.MAX_STRING
    peer = PeerStatus("http://c:8200", push_error=long, round_error=long, reach_error="short")
    assert len(peer.push_error.encode()) == len(peer.round_error) == limits.MAX_STRING
    assert peer.push_error.startswith("http://c:8200: HTTP 400") and peer.reach_error == "short"
    reply = StatusReply("a", "http://a:1", 0, 1, 0, [peer])
    assert decode(encode(reply), StatusReply, BIG) == reply


@pytest.mark.parametrize("text", ["", "ascii", "é" * 600, "x" * 1023 + "€", "€" * 400])
def test_clip_keeps_text_within_the_byte_limit(text):
    out = clip(text)
    assert len(out.encode()) <= limits.MAX_STRING
    assert out == text if len(text.encode()) <= limits.MAX_STRING else out.endswith("...")
    assert decode(encode(Error("c", out))) == Error("c", out)


def test_status_reply_index_map():
    from protocol.messages import IndexStatus
    index = IndexStatus(persistent=False, hours=3, hot_hours=3, cold_loads=0, bytes=0,
                        start="full scan (unavailable)", start_phases=[("walk", 0.5)],
                        problem="cannot create /x/.segsync: read-only")
    message = dataclasses.replace(status_examples()[1], index=index)
    obj = obj_of(message)
    assert obj["index"]["start_phases"] == [["walk", 0.5]]
    back = decode(pack(obj), StatusReply, BIG).index
    assert back.hours == 3 and back.problem == index.problem and back.persistent is False
    obj["index"]["later_field"] = 1  # open: ignored
    assert decode(pack(obj), StatusReply, BIG).index.hours == 3
    obj["index"]["start_phases"] = [["walk"]]
    rejects(pack(obj), "start phase must be an array of 2 items", max_bytes=BIG)
    del obj["index"]
    assert decode(pack(obj), StatusReply, BIG).index is None  # an older node
