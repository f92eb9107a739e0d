"""The pass-through receive buffer (agent.peers.h11_buffer): h11 parses exactly as
with its own buffer, whatever the reads, and a whole body read is passed on as the
same object (no copy)."""

from __future__ import annotations

import h11
import h11._connection
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.peers import h11_buffer
from agent.peers.client import ClientFactory
from h11._receivebuffer import ReceiveBuffer

BODY = bytes(range(256)) * 64
RESPONSES = (
    b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY
    + b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"5\r\nhello\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nx-trailer: 1\r\n\r\n"
    + b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nno!"
)


def parse(buffer_class, reads: list[bytes], requests: int = 3) -> list:
    """Events of a client connection fed `reads`, with `buffer_class` as h11's buffer."""
    saved = h11._connection.ReceiveBuffer
    h11._connection.ReceiveBuffer = buffer_class
    try:
        conn = h11.Connection(h11.CLIENT)
    finally:
        h11._connection.ReceiveBuffer = saved
    events, pending = [], list(reads)
    for _ in range(requests):
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(pending.pop(0) if pending else b"")
                continue
            if isinstance(event, h11.Data):
                event = ("data", bytes(event.data))
            events.append(event)
            if isinstance(event, h11.EndOfMessage):
                break
        conn.start_next_cycle()
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(RESPONSES)), max_size=12))
def test_parses_as_h11_does_whatever_the_reads(cuts):
    reads = split(RESPONSES, cuts)
    expected = parse(ReceiveBuffer, reads)
    got = parse(h11_buffer.PassThroughReceiveBuffer, reads)

    def plain(events):  # Data chunks may be cut differently: compare the bytes
        out, data = [], b""
        for e in events:
            if isinstance(e, tuple):
                data += e[1]
            else:
                out.append((data, e))
                data = b""
        return out

    assert plain(got) == plain(expected)


def test_a_whole_body_read_is_passed_on_without_a_copy():
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (2 * len(BODY))
    first, second = BODY + b"", bytes(reversed(BODY))
    conn = h11.Connection(h11.CLIENT)
    conn._receive_buffer = h11_buffer.PassThroughReceiveBuffer()
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(head)
    assert isinstance(conn.next_event(), h11.Response)
    conn.receive_data(first)
    data = conn.next_event()
    assert data.data is first  # the same object: not copied
    conn.receive_data(second)
    assert conn.next_event().data is second
    assert isinstance(conn.next_event(), h11.EndOfMessage)


def test_the_client_factory_installs_it():
    # fails loudly if an h11 release moves the global (the tuning would silently stop)
    assert "ReceiveBuffer" in vars(h11._connection)
    ClientFactory()
    assert h11._connection.ReceiveBuffer is h11_buffer.PassThroughReceiveBuffer
    assert isinstance(h11.Connection(h11.CLIENT)._receive_buffer,
                      h11_buffer.PassThroughReceiveBuffer)


def test_length_counts_both_parts():
    buf = h11_buffer.PassThroughReceiveBuffer()
    assert not buf and len(buf) == 0
    buf += b"abc"
    assert buf and len(buf) == 3
    buf += b"de"
    assert len(buf) == 5 and bytes(buf) == b"abcde"
    with pytest.raises(TypeError):
        buf += 5  # what h11's own buffer refuses too


def test_a_head_read_with_the_body_start_copies_only_the_tail_once():
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY)
    conn = h11.Connection(h11.CLIENT)
    conn._receive_buffer = h11_buffer.PassThroughReceiveBuffer()
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(head + BODY[:1000])
    assert isinstance(conn.next_event(), h11.Response)
    trailing, _ = conn.trailing_data  # httpcore asks for it: no copy of the body part
    assert trailing == BODY[:1000] and trailing is conn._receive_buffer._whole
    assert bytes(conn.next_event().data) == BODY[:1000]
    rest = BODY[1000:]
    conn.receive_data(rest)
    assert conn.next_event().data is rest


REQUESTS = (
    b"PUT /a HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY
    + b"POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"3\r\nabc\r\n0\r\n\r\n"
    + b"GET /c HTTP/1.1\r\nhost: x\r\n\r\n"
)


def serve(buffer_class, reads: list[bytes]) -> list:
    """Events of a server connection (hypercorn's side) fed `reads`."""
    saved = h11._connection.ReceiveBuffer
    h11._connection.ReceiveBuffer = buffer_class
    try:
        conn = h11.Connection(h11.SERVER)
    finally:
        h11._connection.ReceiveBuffer = saved
    out, data, pending, ends = [], b"", list(reads), 0
    while ends < 3:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(pending.pop(0) if pending else b"")
        elif isinstance(event, h11.Data):
            data += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            out.append(data)
            data = b""
            ends += 1
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
        else:
            out.append(event)
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(REQUESTS)), max_size=12))
def test_a_server_parses_as_with_h11s_buffer(cuts):
    reads = split(REQUESTS, cuts)
    assert serve(h11_buffer.PassThroughReceiveBuffer, reads) == serve(ReceiveBuffer, reads)
