"""Batch fetch responses: framing, the sans-I/O reader, its messages, and batching."""

from __future__ import annotations

import datetime as dt

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import make_name
from protocol import limits
from protocol.errors import ProtocolError
from protocol.fetchstream import (
    FetchStreamReader,
    ItemData,
    ItemEnd,
    ItemMissing,
    ItemStart,
    frame_header,
)
from protocol.messages import (
    Ack,
    FetchItem,
    FetchMissing,
    FetchRequest,
    Offer,
    decode,
    encode,
)
from protocol.replication import fetch_batches

T0 = dt.datetime(2019, 11, 13, 2, 45, 51, 608000, tzinfo=dt.timezone.utc)
NAMES = [make_name(b"segment %d" % i, T0 + dt.timedelta(seconds=2 * i)) for i in range(12)]
PATHS = [n.path for n in NAMES]
A, B, C, D, E = PATHS[:5]
OTHER = make_name(b"not requested", T0 + dt.timedelta(hours=1)).path
FRAME_TYPES = (FetchItem, FetchMissing)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def raw_frame(header: bytes) -> bytes:
    """A frame around any header bytes (frame_header only takes the right messages)."""
    return len(header).to_bytes(2, "big") + header


def build_stream(answers) -> bytes:
    """answers: [(path, bytes)] for a served segment, [(path, "reason")] for a missing one."""
    out = bytearray()
    for path, body in answers:
        if isinstance(body, str):
            out += frame_header(FetchMissing(path, body))
        else:
            out += frame_header(FetchItem(path, len(body))) + body
    return bytes(out)


def expected_events(answers) -> list[tuple]:
    out: list[tuple] = []
    for path, body in answers:
        if isinstance(body, str):
            out.append(("missing", path, body))
        else:
            out.append(("start", path, len(body)))
            if body:
                out.append(("data", body))
            out.append(("end", path))
    return out


def normalize(events) -> list[tuple]:
    """Events -> comparable tuples, consecutive ItemData pieces joined into one."""
    out: list[tuple] = []
    for event in events:
        if isinstance(event, ItemData):
            assert isinstance(event.data, (bytes, bytearray, memoryview)), type(event.data)
            piece = bytes(event.data)
            assert piece, "an empty ItemData event"
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + piece)
            else:
                out.append(("data", piece))
        elif isinstance(event, ItemStart):
            out.append(("start", event.path, event.size))
        elif isinstance(event, ItemEnd):
            out.append(("end", event.path))
        elif isinstance(event, ItemMissing):
            out.append(("missing", event.path, event.reason))
        else:  # pragma: no cover - the reader only makes the four kinds
            raise AssertionError(f"unexpected event {event!r}")
    return out


def feed_all(reader: FetchStreamReader, chunks) -> list:
    events = []
    for chunk in chunks:
        events.extend(reader.feed(chunk))
    return events


def split(data: bytes, cuts) -> list[bytes]:
    cuts = sorted(set(c for c in cuts if 0 < c < len(data)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def rejected(paths, chunks, *fragments: str, max_segment_bytes=limits.MAX_SEGMENT_BYTES,
             finish: bool = True) -> ProtocolError:
    """Feeding `chunks` (then finish(), if asked) must raise ProtocolError."""
    reader = FetchStreamReader(paths, max_segment_bytes)
    with pytest.raises(ProtocolError) as info:
        for chunk in chunks:
            reader.feed(chunk)
        if finish:
            reader.finish()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return info.value


def check_invariants(paths, events, max_segment_bytes=limits.MAX_SEGMENT_BYTES) -> bool:
    """Whatever the input, the events the reader let out describe a prefix of a valid
    response: answers in the requested order, data only inside an item and never more
    than it declared, an end only once all of it came. Returns whether it is complete."""
    k = 0  # answers seen
    current = None  # (path, size, received)
    for event in events:
        if isinstance(event, (ItemStart, ItemMissing)):
            assert current is None, event
            assert k < len(paths), event
            assert event.path == paths[k], (event, paths[k])
            k += 1
            if isinstance(event, ItemStart):
                assert 0 <= event.size <= max_segment_bytes
                current = (event.path, event.size, 0)
        elif isinstance(event, ItemData):
            assert current is not None, "data outside an item"
            path, size, got = current
            got += len(event.data)
            assert 0 < len(event.data) and got <= size, (got, size)
            current = (path, size, got)
        else:
            assert isinstance(event, ItemEnd)
            assert current is not None and event.path == current[0]
            assert current[2] == current[1], "end before all the bytes came"
            current = None
    return k == len(paths) and current is None


ANSWERS = [
    (A, b"first segment bytes " * 20),
    (B, "not_found"),
    (C, b""),
    (D, bytes(range(256)) * 3),
    (E, "tombstoned"),
]
ANSWER_PATHS = [p for p, _ in ANSWERS]
STREAM = build_stream(ANSWERS)


# ---- round trips ----

def test_stream_in_one_piece():
    reader = FetchStreamReader(ANSWER_PATHS)
    assert not reader.done
    events = reader.feed(STREAM)
    assert normalize(events) == expected_events(ANSWERS)
    assert reader.done
    reader.finish()


def test_event_objects_are_the_documented_ones():
    reader = FetchStreamReader([A, B, C])
    events = reader.feed(build_stream([(A, b"abc"), (B, "gone"), (C, b"")]))
    assert events == [ItemStart(A, 3), ItemData(events[1].data), ItemEnd(A),
                      ItemMissing(B, "gone"), ItemStart(C, 0), ItemEnd(C)]
    assert bytes(events[1].data) == b"abc"


def test_stream_byte_by_byte():
    reader = FetchStreamReader(ANSWER_PATHS)
    events = []
    for i in range(len(STREAM)):
        assert not reader.done, i
        events.extend(reader.feed(STREAM[i:i + 1]))
    assert reader.done
    assert normalize(events) == expected_events(ANSWERS)
    reader.finish()


def test_data_pieces_follow_the_chunks():
    """Byte by byte, a segment's bytes come as one ItemData per byte, never buffered."""
    reader = FetchStreamReader([A])
    body = b"0123456789"
    stream = build_stream([(A, body)])
    header_len = len(stream) - len(body)
    assert feed_all(reader, [stream[i:i + 1] for i in range(header_len - 1)]) == []
    assert reader.feed(stream[header_len - 1:header_len]) == [ItemStart(A, len(body))]
    for i, byte in enumerate(body):
        events = reader.feed(bytes([byte]))
        tail = [ItemEnd(A)] if i == len(body) - 1 else []
        assert len(events) == 1 + len(tail)
        assert bytes(events[0].data) == bytes([byte]) and events[1:] == tail


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=30))
def test_stream_split_anywhere(cuts):
    chunks = split(STREAM, cuts)
    assert b"".join(chunks) == STREAM
    reader = FetchStreamReader(ANSWER_PATHS)
    events = []
    for chunk in chunks:
        assert not reader.done
        events.extend(reader.feed(chunk))
    assert normalize(events) == expected_events(ANSWERS)
    assert reader.done
    reader.finish()


reasons = st.sampled_from(["not_found", "tombstoned", "", "é" * 10])


@st.composite
def responses(draw):
    """A random valid response: requested paths, their answers, the bytes, the cuts."""
    paths = draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=8))
    answers = [(p, draw(st.one_of(reasons, st.binary(max_size=300)))) for p in paths]
    stream = build_stream(answers)
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=20))
    return paths, answers, stream, cuts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_random_responses_round_trip(response):
    """Any mix of items, missing and empty, repeated paths, in any chunks."""
    paths, answers, stream, cuts = response
    reader = FetchStreamReader(paths)
    events = feed_all(reader, split(stream, cuts))
    assert normalize(events) == expected_events(answers)
    assert check_invariants(paths, events)
    assert reader.done
    reader.finish()


def test_zero_byte_segment():
    reader = FetchStreamReader([A])
    assert reader.feed(frame_header(FetchItem(A, 0))) == [ItemStart(A, 0), ItemEnd(A)]
    assert reader.done
    reader.finish()


def test_missing_only():
    reader = FetchStreamReader([A, B])
    events = reader.feed(build_stream([(A, "not_found"), (B, "tombstoned")]))
    assert events == [ItemMissing(A, "not_found"), ItemMissing(B, "tombstoned")]
    assert reader.done
    reader.finish()


def test_done_only_once_the_last_byte_came():
    reader = FetchStreamReader([A])
    stream = build_stream([(A, b"xyz")])
    reader.feed(stream[:-1])
    assert not reader.done
    assert reader.feed(stream[-1:])[-1] == ItemEnd(A)
    assert reader.done


def test_empty_feed_is_harmless():
    reader = FetchStreamReader([A])
    assert reader.feed(b"") == []
    stream = build_stream([(A, b"abc")])
    events = feed_all(reader, [b"", stream[:1], b"", stream[1:-1], b"", stream[-1:], b""])
    assert normalize(events) == expected_events([(A, b"abc")])
    reader.finish()


def test_accepts_bytearray_and_memoryview_chunks():
    reader = FetchStreamReader(ANSWER_PATHS)
    half = len(STREAM) // 2
    events = reader.feed(bytearray(STREAM[:half])) + reader.feed(memoryview(STREAM)[half:])
    assert normalize(events) == expected_events(ANSWERS)
    reader.finish()


def test_no_paths_asked():
    reader = FetchStreamReader([])
    assert reader.done
    reader.finish()
    rejected([], [b"\x00"], "after the last", finish=False)


def test_reader_keeps_its_own_copy_of_the_paths():
    paths = [A, B]
    reader = FetchStreamReader(paths)
    paths[:] = [C]
    events = reader.feed(build_stream([(A, "x"), (B, "y")]))
    assert [e.path for e in events] == [A, B]
    assert reader.done


def test_segment_as_large_as_the_limit_is_accepted():
    reader = FetchStreamReader([A], max_segment_bytes=10)
    events = reader.feed(build_stream([(A, b"0123456789")]))
    assert normalize(events) == expected_events([(A, b"0123456789")])
    reader.finish()
    # the default limit is the protocol's: its largest segment may start
    reader = FetchStreamReader([A])
    assert reader.feed(frame_header(FetchItem(A, limits.MAX_SEGMENT_BYTES))) == [
        ItemStart(A, limits.MAX_SEGMENT_BYTES)]
    assert not reader.done


# ---- zero copy ----

def test_chunk_inside_one_segment_is_passed_on_as_is():
    body = b"a" * 100
    stream = build_stream([(A, body), (B, b"tail")])
    header_len = len(stream) - len(body) - len(build_stream([(B, b"tail")]))
    reader = FetchStreamReader([A, B])
    assert reader.feed(stream[:header_len]) == [ItemStart(A, 100)]
    middle = body[:40]  # strictly inside
    events = reader.feed(middle)
    assert len(events) == 1 and events[0].data is middle
    last = body[40:]  # exactly the rest of the segment: data, then the end
    events = reader.feed(last)
    assert len(events) == 2 and events[0].data is last and events[1] == ItemEnd(A)
    rest = normalize(reader.feed(stream[header_len + len(body):]))
    assert rest == expected_events([(B, b"tail")])
    reader.finish()


def test_chunk_that_is_a_whole_segment_is_passed_on_as_is():
    reader = FetchStreamReader([A])
    body = bytes(range(200))
    reader.feed(frame_header(FetchItem(A, len(body))))
    events = reader.feed(body)
    assert events[0].data is body and events[1:] == [ItemEnd(A)]


def test_chunk_spanning_frames_is_cut_exactly():
    """A chunk holding the end of one segment and the next frame: the data event
    holds only this segment's bytes."""
    reader = FetchStreamReader([A, B])
    reader.feed(frame_header(FetchItem(A, 5)) + b"01")
    events = reader.feed(b"234" + frame_header(FetchItem(B, 2)) + b"xy")
    assert [bytes(e.data) if isinstance(e, ItemData) else e for e in events] == [
        b"234", ItemEnd(A), ItemStart(B, 2), b"xy", ItemEnd(B)]
    reader.finish()


# ---- errors ----

def test_frame_for_a_later_path_is_rejected():
    rejected([A, B], [build_stream([(B, b"b"), (A, b"a")])], B, A, finish=False)
    rejected([A, B], [build_stream([(B, "not_found")])], finish=False)


def test_frame_for_an_unrequested_path_is_rejected():
    rejected([A], [build_stream([(OTHER, b"x")])], OTHER, finish=False)
    rejected([A, B], [build_stream([(A, b"a"), (OTHER, "not_found")])], OTHER, finish=False)


def test_frame_repeating_a_path_is_rejected():
    rejected([A, B], [build_stream([(A, b"a"), (A, b"a")])], finish=False)


def test_tombstone_path_in_a_frame_is_rejected():
    header = pack({"v": 1, "type": "fetch_item", "path": NAMES[0].tombstone_path, "size": 1})
    rejected([A], [raw_frame(header) + b"x"], finish=False)


def test_rejection_comes_before_the_segment_bytes():
    """The wrong path is rejected at its header, not after its bytes arrived."""
    rejected([A], [frame_header(FetchItem(B, 10))], finish=False)


def test_size_over_the_reader_limit_is_rejected():
    rejected([A], [frame_header(FetchItem(A, 11))], "over the limit",
             max_segment_bytes=10, finish=False)
    rejected([A, B], [build_stream([(A, b"ok"), (B, b"x" * 11)])],
             max_segment_bytes=10, finish=False)


def test_size_over_the_protocol_limit_is_rejected():
    header = pack({"v": 1, "type": "fetch_item", "path": A, "size": limits.MAX_SEGMENT_BYTES + 1})
    rejected([A], [raw_frame(header)], finish=False)


@pytest.mark.parametrize("size", [-1, "1", 1.0, True, None])
def test_bad_sizes_are_rejected(size):
    rejected([A], [raw_frame(pack({"v": 1, "type": "fetch_item", "path": A, "size": size}))],
             finish=False)


def test_header_length_zero_is_rejected():
    rejected([A], [b"\x00\x00" + frame_header(FetchItem(A, 0))], "out of bounds", finish=False)
    rejected([A], [b"\x00", b"\x00", b"\x01"], "out of bounds", finish=False)
    rejected([A], [b"\x00\x00"])  # the response ends there


@pytest.mark.parametrize("length", [limits.MAX_FRAME_HEADER + 1, 0xFFFF])
def test_header_length_over_the_limit_is_rejected_early(length):
    """At the first byte of the header, not after buffering `length` bytes."""
    rejected([A], [length.to_bytes(2, "big") + b"\x81"], "out of bounds", finish=False)
    rejected([A], [length.to_bytes(2, "big"), b"\x81"], "out of bounds", finish=False)


def test_header_length_at_the_limit_is_awaited():
    reader = FetchStreamReader([A])
    assert reader.feed(limits.MAX_FRAME_HEADER.to_bytes(2, "big") + b"\x81" * 100) == []
    with pytest.raises(ProtocolError):
        reader.finish()


@pytest.mark.parametrize("header", [
    b"\xc1",  # never used in msgpack
    b"\x93\x01\x02",  # truncated array
    b"\x81\xa1",  # truncated map
    b"\xff",  # a valid msgpack int, not a map
    pack([1, 2, 3]),
    pack({"v": 1}),
    pack({"v": 2, "type": "fetch_item", "path": A, "size": 1}),
    pack({"v": 1, "type": "fetch_item", "path": A}),
    pack({"v": 1, "type": "fetch_item", "path": A, "size": 1, "extra": 1}),
    pack({"v": 1, "type": "fetch_missing", "path": A, "reason": 1}),
    pack({"v": 1, "type": "fetch_missing", "path": "../../etc/passwd", "reason": "x"}),
    pack({"v": 1, "type": "fetch_item", "path": A, "size": 1}) + b"\x00",  # trailing byte
])
def test_malformed_header_is_rejected(header):
    rejected([A], [raw_frame(header) + b"x"], finish=False)
    rejected([A], [raw_frame(header)[:i + 1] for i in range(len(raw_frame(header)))])


@pytest.mark.parametrize("message", [
    Ack("stored"),
    Offer(A, 1),
    FetchRequest([A]),
])
def test_other_message_types_are_rejected(message):
    rejected([A], [raw_frame(encode(message)) + b"x"], "expected", finish=False)


def test_bytes_after_the_last_answer_are_rejected():
    rejected([A], [build_stream([(A, b"abc")]) + b"\x00"], "after the last", finish=False)
    rejected([A], [build_stream([(A, b"abc")]), b"\x00"], "after the last", finish=False)
    rejected([A], [build_stream([(A, b"")]) + b"x"], "after the last", finish=False)
    rejected([A], [build_stream([(A, "gone")]), b"x"], "after the last", finish=False)
    # a whole extra frame, even for a requested path
    rejected([A], [build_stream([(A, b"abc"), (A, b"abc")])], finish=False)
    rejected(ANSWER_PATHS, [STREAM + frame_header(FetchMissing(A, "x"))], finish=False)


def test_finish_inside_the_header_length():
    reader = FetchStreamReader([A])
    reader.feed(frame_header(FetchItem(A, 3))[:1])
    with pytest.raises(ProtocolError, match="inside a frame"):
        reader.finish()


def test_finish_inside_the_header():
    header = frame_header(FetchItem(A, 3))
    for cut in range(2, len(header)):
        reader = FetchStreamReader([A])
        assert reader.feed(header[:cut]) == []
        with pytest.raises(ProtocolError, match="inside a frame"):
            reader.finish()


def test_finish_inside_the_segment_bytes():
    stream = build_stream([(A, b"abcdef")])
    for cut in range(1, 7):
        reader = FetchStreamReader([A])
        reader.feed(stream[:-cut])
        assert not reader.done
        with pytest.raises(ProtocolError, match="inside a frame"):
            reader.finish()


def test_finish_inside_the_segment_bytes_of_a_middle_item():
    rejected([A, B], [build_stream([(A, b"abcdef")])[:-1]], "inside a frame")


def test_finish_before_every_path_was_answered():
    rejected([A, B, C], [], "0 of 3")
    rejected([A, B, C], [build_stream([(A, b"abc")])], "1 of 3")
    rejected([A, B, C], [build_stream([(A, b"abc"), (B, "gone")])], "2 of 3")
    rejected([A, B], [build_stream([(A, b"")])], "1 of 2")


def test_every_proper_prefix_fails_to_finish():
    for cut in range(len(STREAM)):
        reader = FetchStreamReader(ANSWER_PATHS)
        reader.feed(STREAM[:cut])
        assert not reader.done, cut
        with pytest.raises(ProtocolError):
            reader.finish()


# ---- fuzz ----

def run_hostile(paths, chunks, max_segment_bytes=limits.MAX_SEGMENT_BYTES):
    """Feed untrusted chunks; only ProtocolError may come out, and the events let out
    before it must be consistent. Returns (events, finished cleanly)."""
    reader = FetchStreamReader(paths, max_segment_bytes)
    events = []
    try:
        for chunk in chunks:
            events.extend(reader.feed(chunk))
        reader.finish()
    except ProtocolError:
        check_invariants(paths, events, max_segment_bytes)
        return events, False
    assert check_invariants(paths, events, max_segment_bytes)
    assert reader.done
    return events, True


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=10),
       st.lists(st.sampled_from(PATHS), max_size=4))
def test_random_bytes_only_raise_protocol_error(data, cuts, paths):
    run_hostile(paths, split(data, cuts))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PATHS), min_size=1, max_size=4), st.binary(max_size=400),
       st.lists(st.integers(0, 400), max_size=5))
def test_random_bytes_after_a_valid_length_prefix(paths, body, cuts):
    """Garbage that gets past the length check, so the header decoder sees it."""
    data = min(len(body), limits.MAX_FRAME_HEADER).to_bytes(2, "big") + body
    run_hostile(paths, split(data, cuts))


@st.composite
def mutated_responses(draw):
    paths, answers, stream, cuts = draw(responses())
    data = bytearray(stream)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x07, 0x08, 0x7F, 0x80, 0xC1, 0xCE,
                                              0xD9, 0xDC, 0xFF, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 4))]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos:]
    return paths, bytes(data), cuts, draw(st.sampled_from([limits.MAX_SEGMENT_BYTES, 100]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_responses())
def test_mutated_responses_only_raise_protocol_error(case):
    paths, data, cuts, max_segment_bytes = case
    events, clean = run_hostile(paths, split(data, cuts), max_segment_bytes)
    if clean:
        # a mutation the reader accepted must still be a whole, well-formed response
        assert sum(isinstance(e, (ItemEnd, ItemMissing)) for e in events) == len(paths)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.integers(0, 300))
def test_reader_limit_is_enforced_on_valid_streams(response, limit):
    paths, answers, stream, cuts = response
    events, clean = run_hostile(paths, split(stream, cuts), limit)
    too_big = [body for _, body in answers if isinstance(body, bytes) and len(body) > limit]
    assert clean == (not too_big)
    if clean:
        assert normalize(events) == expected_events(answers)


# ---- frame_header ----

@pytest.mark.parametrize("message", [
    FetchItem(A, 0), FetchItem(A, 12345), FetchItem(A, limits.MAX_SEGMENT_BYTES),
    FetchMissing(A, "not_found"), FetchMissing(A, ""),
])
def test_frame_header_is_length_then_message(message):
    frame = frame_header(message)
    length = int.from_bytes(frame[:2], "big")
    assert 0 < length <= limits.MAX_FRAME_HEADER
    assert length == len(frame) - 2
    assert frame[2:] == encode(message)
    assert decode(frame[2:], FRAME_TYPES, limits.MAX_FRAME_HEADER) == message


def test_frame_header_refuses_a_header_over_the_limit():
    with pytest.raises(ProtocolError, match="over the limit"):
        frame_header(FetchMissing(A, "x" * limits.MAX_FRAME_HEADER))
    with pytest.raises(ProtocolError):
        frame_header(FetchMissing(A, "€" * 1000))  # 3000 bytes of UTF-8


def test_frame_header_takes_the_longest_reason_a_reader_accepts():
    reason = "x" * limits.MAX_STRING
    frame = frame_header(FetchMissing(A, reason))
    assert len(frame) - 2 <= limits.MAX_FRAME_HEADER
    assert FetchStreamReader([A]).feed(frame) == [ItemMissing(A, reason)]


@pytest.mark.parametrize("message", [
    FetchMissing(A, "x" * (limits.MAX_STRING + 1)),  # under MAX_FRAME_HEADER, over MAX_STRING
    FetchMissing(A, "é" * (limits.MAX_STRING // 2 + 1)),  # the limit counts UTF-8 bytes
    FetchItem(A, -1),
    FetchItem(A, limits.MAX_SEGMENT_BYTES + 1),
    FetchItem(NAMES[0].tombstone_path, 1),
    FetchMissing("not/a/segment", "x"),
])
def test_frame_header_refuses_what_no_reader_accepts(message):
    assert len(encode(message)) <= limits.MAX_FRAME_HEADER
    with pytest.raises(ProtocolError):
        frame_header(message)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=1500), st.sampled_from(PATHS))
def test_what_frame_header_emits_the_reader_accepts(reason, path):
    """The sender's framing and the reader agree: a header is either refused when it
    is made, or read back as it was."""
    try:
        frame = frame_header(FetchMissing(path, reason))
    except ProtocolError:
        assert len(reason.encode()) > limits.MAX_STRING
        return
    assert FetchStreamReader([path]).feed(frame) == [ItemMissing(path, reason)]


# ---- messages ----

def test_fetch_request_round_trips():
    for paths in ([A], PATHS, [A, A], [PATHS[i % len(PATHS)] for i in range(limits.MAX_FETCH_PATHS)]):
        message = FetchRequest(list(paths))
        assert decode(encode(message)) == message
        assert decode(encode(message), FetchRequest).paths == list(paths)


def fetch_request(paths) -> bytes:
    return pack({"v": 1, "type": "fetch_request", "paths": paths})


def test_fetch_request_bounds():
    decode(fetch_request([A] * limits.MAX_FETCH_PATHS), FetchRequest)
    with pytest.raises(ProtocolError, match="paths must hold"):
        decode(fetch_request([]), FetchRequest)
    with pytest.raises(ProtocolError, match="paths must hold"):
        decode(fetch_request([A] * (limits.MAX_FETCH_PATHS + 1)), FetchRequest)


@pytest.mark.parametrize("paths", [
    A, None, 3, {"a": A}, b"paths",
    [NAMES[0].tombstone_path],
    [A, NAMES[1].tombstone_path],
    ["../../etc/passwd"],
    [A, "desertbus/source/2019-11-13T02/not-a-segment.ts"],
    [A.replace("desertbus/", "")],
    [A, None],
    [A, 7],
    [A, [A]],
    [A.encode()],
    [""],
])
def test_fetch_request_rejects_bad_paths(paths):
    with pytest.raises(ProtocolError):
        decode(fetch_request(paths), FetchRequest)


def test_fetch_request_rejects_extra_and_missing_fields():
    with pytest.raises(ProtocolError, match="unexpected"):
        decode(pack({"v": 1, "type": "fetch_request", "paths": [A], "more": 1}))
    with pytest.raises(ProtocolError, match="missing"):
        decode(pack({"v": 1, "type": "fetch_request"}))


@pytest.mark.parametrize("message", [
    FetchItem(A, 0), FetchItem(A, 1), FetchItem(A, limits.MAX_SEGMENT_BYTES),
    FetchMissing(A, "not_found"), FetchMissing(A, ""), FetchMissing(A, "é" * 100),
])
def test_frame_messages_round_trip(message):
    assert decode(encode(message), FRAME_TYPES, limits.MAX_FRAME_HEADER) == message
    assert decode(encode(message)) == message


@pytest.mark.parametrize("size", [-1, limits.MAX_SEGMENT_BYTES + 1, 2**64 - 1, True, 1.5, "3"])
def test_fetch_item_rejects_bad_sizes(size):
    with pytest.raises(ProtocolError, match="size"):
        decode(pack({"v": 1, "type": "fetch_item", "path": A, "size": size}))


@pytest.mark.parametrize("obj", [
    {"path": NAMES[0].tombstone_path, "size": 1},
    {"path": "nope", "size": 1},
    {"path": None, "size": 1},
    {"size": 1},
    {"path": A},
])
def test_fetch_item_rejects_bad_shapes(obj):
    with pytest.raises(ProtocolError):
        decode(pack({"v": 1, "type": "fetch_item", **obj}))


@pytest.mark.parametrize("obj", [
    {"path": NAMES[0].tombstone_path, "reason": "x"},
    {"path": A, "reason": None},
    {"path": A, "reason": b"bytes"},
    {"path": A},
    {"reason": "x"},
    {"path": A, "reason": "x", "size": 1},
])
def test_fetch_missing_rejects_bad_shapes(obj):
    with pytest.raises(ProtocolError):
        decode(pack({"v": 1, "type": "fetch_missing", **obj}))


# ---- fetch_batches ----

def test_fetch_batches_of_nothing():
    assert fetch_batches([], 4, 32) == []
    assert fetch_batches((), 1, 1) == []


@pytest.mark.parametrize("n, slots", [(1, 1), (1, 5), (3, 5), (5, 5), (20, 5), (8, 2)])
def test_few_names_go_one_per_batch(n, slots):
    """Up to four per slot: one segment a batch, so every slot gets work at once."""
    names = list(range(n))
    assert fetch_batches(names, slots, 32) == [[i] for i in names]


def test_many_names_make_large_batches():
    names = [f"n{i}" for i in range(1000)]
    batches = fetch_batches(names, 5, 32)
    assert [len(b) for b in batches] == [32] * 31 + [8]
    assert [x for b in batches for x in b] == names
    # 400 over 5 slots: 80 each, batches of a quarter of that
    assert [len(b) for b in fetch_batches(names[:400], 5, 32)] == [20] * 20


def test_fetch_batches_keeps_the_objects_and_the_input():
    names = tuple(NAMES)
    batches = fetch_batches(names, 2, 3)
    assert names == tuple(NAMES)
    flat = [x for b in batches for x in b]
    assert len(flat) == len(names) and all(a is b for a, b in zip(flat, names))
    assert all(type(b) is list for b in batches)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(0, 20), st.integers(1, 70))
def test_fetch_batches_properties(n, slots, max_batch):
    names = [("name", i) for i in range(n)]
    batches = fetch_batches(names, slots, max_batch)
    assert [x for b in batches for x in b] == names
    assert all(1 <= len(b) <= max_batch for b in batches)
    # every slot gets work (as long as there is enough of it)
    assert len(batches) >= min(n, max(1, slots))
    # but batches are not needlessly small: about four a slot, unless max_batch caps them
    assert len(batches) <= max(4 * max(1, slots), -(-n // max_batch))
    # one batch size, the last one takes the rest
    if batches:
        assert len({len(b) for b in batches[:-1]}) <= 1
        assert len(batches[-1]) <= len(batches[0])


def test_a_bad_header_length_is_refused_as_soon_as_it_is_complete():
    for length in (b"\x00\x00", (limits.MAX_FRAME_HEADER + 1).to_bytes(2, "big")):
        reader = FetchStreamReader([A])
        assert reader.feed(length[:1]) == []
        with pytest.raises(ProtocolError, match="out of bounds"):
            reader.feed(length[1:])
