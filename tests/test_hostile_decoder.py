"""The msgpack decoder under hostile bytes: only ProtocolError, and bounded memory.

SEGSYNC_FUZZ_EXAMPLES scales the example counts (default 1200 per property).
"""

from __future__ import annotations

import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fault_helpers import env_int
from protocol import limits
from protocol import messages as m
from protocol.errors import ProtocolError

EXAMPLES = env_int("SEGSYNC_FUZZ_EXAMPLES", 1200)
PATH = "desertbus/source/2019-11-13T02/45:51.608000-2.0-full-7IS92rssMzoSBQDIevHStbTNy-URRV3Vw-jzZ6pwOZM"
VALID = [
    m.encode(m.Offer(PATH + ".ts", 10)), m.encode(m.Tombstone(PATH + ".tombstone")),
    m.encode(m.PairDigests("2019-11-13T00", "2019-11-13T05",
                           [("desertbus", "source", bytes(32))])),
    m.encode(m.HourDigests("desertbus", "source", [("2019-11-13T02", bytes(32))])),
    m.encode(m.Listing("desertbus", "source", "2019-11-13T02", [PATH.split("/")[-1] + ".ts"])),
    m.encode(m.ListingRequest("desertbus", "source", "2019-11-13T02")),
    m.encode(m.StatusRequest()), m.encode(m.Ack("stored")), m.encode(m.Error("c", "m")),
]
TARGETS = [None, *m.MESSAGE_TYPES.values()]
# memory one decode may use, whatever the input (inputs are at most MAX_REPLY_BYTES)
PEAK_BOUND = 16 * 2**20  # measured worst cases peak near 4 MiB
TRIED = {"random": 0, "mutated": 0, "headers": 0}


def decode_only_protocol_error(data: bytes) -> None:
    for expect in TARGETS:
        try:
            msg = m.decode(data, expect, limits.MAX_REPLY_BYTES)
        except ProtocolError:
            continue
        assert isinstance(msg, m.Message)
        assert expect is None or isinstance(msg, expect)
    try:
        m.unpack_bounded(data, limits.MAX_REPLY_BYTES)
    except ProtocolError:
        pass


def peak_decoding(data: bytes) -> int:
    """Bytes allocated at the peak of decoding `data`, traced (tracemalloc makes every
    allocation slow, so once: the message is unpacked whole before its type is looked
    at, and with no type expected the matching one is still built; the other expected
    types only add their refusal)."""
    tracemalloc.start()
    try:
        try:
            m.decode(data, None, limits.MAX_REPLY_BYTES)  # unpack_bounded, then the type
        except ProtocolError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def fuzz(n: int = EXAMPLES):
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@fuzz()
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    TRIED["random"] += 1
    decode_only_protocol_error(data)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "splice", "dup"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 8))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "splice":
            data[i:] = draw(st.sampled_from(VALID))
        elif op == "dup":
            data.extend(bytes(data))
    return bytes(data)


@fuzz()
@given(mutated())
def test_mutated_messages(data):
    TRIED["mutated"] += 1
    decode_only_protocol_error(data)


HEADERS = [b"\xdc\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xde\xff\xff", b"\xdf\xff\xff\xff\xff",
           b"\x9f", b"\x8f", b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
           b"\xc9\xff\xff\xff\xff\x01", b"\xdd\x00\x00\xc3\x50", b"\xdc\xc3\x50"]


@fuzz(max(50, EXAMPLES // 6))  # tracemalloc makes each example slow
@given(st.lists(st.sampled_from(HEADERS), min_size=1, max_size=40),
       st.sampled_from([0, 100, 60_000]))
def test_container_headers_cost_bounded_memory(headers, padding):
    """Nested length headers: msgpack would allocate what they declare; we must not."""
    TRIED["headers"] += 1
    data = b"".join(headers) + b"\xc0" * padding
    decode_only_protocol_error(data)
    peak = peak_decoding(data)
    assert peak < PEAK_BOUND, f"{peak} bytes to refuse {len(data)} bytes"


@pytest.mark.parametrize("data", [
    b"\x91" * 10_000,                                  # deep nesting
    b"\xdd\x00\x00\xc3\x50" + b"\x90" * 50_000,         # 50k empty arrays
    b"\xdd\x00\x00\xc3\x50" + b"\x80" * 50_000,         # 50k empty maps
    b"\xdc\xc3\x50" + b"\xdc\xc3\x50" * 8 + b"\xc0" * 100,
    # without MAX_ITEMS: 80 arrays of 50k nils, 4M slots (33 MB)
    b"\xdc\x00\x50" + (b"\xdc\xc3\x50" + b"\xc0" * 50_000) * 80,
    # without the container budget: 320k small arrays, ~20 MB
    b"\xdc\x4e\x20" + (b"\x9f" + b"\x90" * 15) * 20_000,
    msgpack.packb({"v": 1, "type": "listing", "channel": "a", "quality": "b",
                   "hour": "2019-11-13T02", "names": ["x" * 1000] * 4000}),
    b"\xda\xff\xff" + b"a" * 65535,
], ids=["deep", "arrays", "maps", "nested-headers", "wide-arrays", "arrays-of-arrays",
        "big-listing", "long-string"])
def test_worst_cases_bounded(data):
    """Each is refused (or decoded) within PEAK_BOUND; only ProtocolError is raised
    (`peak_decoding` lets anything else through)."""
    peak = peak_decoding(data[: limits.MAX_REPLY_BYTES])
    assert peak < PEAK_BOUND, peak


def test_report_counts():
    print(f"\ndecoder inputs tried: {TRIED}")
