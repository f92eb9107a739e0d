"""HTTP plumbing to one peer: a gated httpx client, deadlines, bounded reads, and the
one place where transport failures become `PeerError`.

Every request passes a `trio.Semaphore` before it reaches httpx's pool (httpx can
leak pool slots when requests are cancelled while queued). httpx's timeouts bound
each read or write, not a whole exchange, so every exchange also runs under a
deadline of its own.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from typing import AsyncIterator, Awaitable, Callable

import httpcore
import httpx
import trio

from protocol import limits
from protocol import messages as m
from protocol.errors import ProtocolError

from . import h11_buffer

# Before a chunk of `n` bytes moves: wait for the node's bandwidth limit, return the
# seconds waited (the transfer's deadline moves by as much: the peer was not slow)
Pace = Callable[[int], Awaitable[float]]

# Every exchange has a deadline: control messages `CALL_DEADLINE_FACTOR * timeout`,
# transfers `timeout + bytes / MIN_RATE` (a peer dripping one byte per second would
# otherwise hold a request for ever).
CALL_DEADLINE_FACTOR = 3
MIN_RATE = 64 * 1024  # bytes per second
# httpcore reads a response 64 KiB at a time, and every read climbs the whole
# trio/httpcore/h11/httpx stack, about 100 us of CPU: during a backfill that stack is
# most of the client's CPU. Reading up to 1 MiB at once (what the socket holds, so a
# read never waits for more) cuts the client's CPU by a quarter to a third
# (bench/backfill_throughput.py). `READ_NUM_BYTES` is a class constant of httpcore's
# exported HTTP/1.1 connection; tests/test_client_tuning.py fails if a release drops
# it. Memory stays bounded: one read per connection at a time.
RESPONSE_READ_BYTES = 1024 * 1024


def tune_httpcore() -> None:
    """Set httpcore's response read size, and h11's receive buffer that does not copy
    body bytes (`agent.peers.h11_buffer`) (idempotent; the client factory calls it)."""
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = RESPONSE_READ_BYTES
    h11_buffer.install()


class PeerError(Exception):
    """A peer that could not be reached, or answered something unusable."""

    def __init__(self, peer: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{peer}: {message}")
        self.peer = peer
        self.status = status


def describe_http_error(e: BaseException) -> str:
    """An httpx error with the causes it wraps: a failed TLS handshake surfaces as a
    ConnectError with no text, the reason (an untrusted or expired certificate) is in
    its chain."""
    texts: list[str] = []
    cause: BaseException | None = e
    for _ in range(6):
        if cause is None:
            break
        text = str(cause)
        if text and text not in texts:
            texts.append(text)
        cause = cause.__cause__ or cause.__context__
    return f"{type(e).__name__}: {'; '.join(texts[:3])}"


class Transport:
    """One peer's HTTP connection pool, gated, with deadlines and error translation."""

    def __init__(self, url: str, http: httpx.AsyncClient, concurrency: int,
                 timeout: float) -> None:
        self.url = url
        self.http = http
        self.concurrency = concurrency  # exchanges at once (the gate's size)
        self.gate = trio.Semaphore(concurrency)
        self.timeout = timeout

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.http.aclose()

    @contextmanager
    def errors(self):
        """The one place where httpx's and the decoder's failures become PeerError."""
        try:
            yield
        except httpx.HTTPError as e:
            raise PeerError(self.url, describe_http_error(e)) from None
        except ProtocolError as e:
            raise PeerError(self.url, f"bad reply: {e}") from None

    @contextmanager
    def deadline(self, seconds: float, what: str):
        """A whole-exchange deadline; running past it is a PeerError."""
        with trio.move_on_after(seconds) as scope:
            yield scope
        if scope.cancelled_caught:
            raise PeerError(self.url, f"{what}: no complete exchange within {seconds:.0f}s")

    def transfer_deadline(self, nbytes: int) -> float:
        """Seconds a transfer of `nbytes` may take at the slowest acceptable rate."""
        return self.timeout + nbytes / MIN_RATE

    async def read_limited(self, response: httpx.Response, limit: int) -> bytes:
        buf = bytearray()
        async for chunk in response.aiter_raw():
            buf += chunk
            if len(buf) > limit:
                raise PeerError(self.url, f"reply larger than {limit} bytes")
        return bytes(buf)

    @staticmethod
    def error_text(status: int, body: bytes) -> str:
        """A non-200 reply as text: its status, and its `Error` message if it is one."""
        try:
            err = m.decode(body, m.Error, limits.MAX_REQUEST_BYTES)
            return f"HTTP {status} {err.code}: {err.message}"
        except ProtocolError:
            return f"HTTP {status}"

    def decode_reply(self, status: int, data: bytes,
                     expect: type[m.Message] | tuple[type[m.Message], ...],
                     max_reply: int) -> m.Message:
        """A 200 reply decoded as `expect`; anything else is a PeerError saying why."""
        if status != 200:
            raise PeerError(self.url, self.error_text(status, data), status)
        try:
            return m.decode(data, expect, max_reply)
        except ProtocolError as e:
            raise PeerError(self.url, f"bad reply: {e}") from None

    async def raise_unless_ok(self, response: httpx.Response, what: str) -> None:
        """A streamed reply that is not 200: its (bounded) error body, read within the
        timeout, becomes a PeerError carrying the status."""
        if response.status_code != 200:
            with self.deadline(self.timeout, f"error reply for {what}"):
                data = await self.read_limited(response, limits.MAX_REQUEST_BYTES)
            raise PeerError(self.url, self.error_text(response.status_code, data),
                            response.status_code)

    async def exchange(self, method: str, path: str, *, max_reply: int, deadline: float,
                       content=None, headers: dict | None = None,
                       moved: "MovableDeadline | None" = None) -> tuple[int, bytes]:
        """One request whose whole (bounded) reply is read: (status, body). `moved`:
        what the body waited for our own bandwidth limit moves the deadline."""
        async with self.gate:
            with self.deadline(deadline, path) as scope, self.errors():
                if moved is not None:
                    moved.scope = scope
                async with self.http.stream(method, path, content=content,
                                            headers=headers) as response:
                    data = await self.read_limited(response, max_reply)
        return response.status_code, data

    @asynccontextmanager
    async def stream(self, method: str, path: str, *, content=None
                     ) -> AsyncIterator[httpx.Response]:
        """A streamed 200 reply (the caller reads it under deadlines of its own)."""
        async with self.gate:
            with self.errors():
                async with self.http.stream(method, path, content=content) as response:
                    await self.raise_unless_ok(response, path)
                    yield response

    @asynccontextmanager
    async def stream_segment(self, path: str, what: str, max_bytes: int,
                             pace: Pace | None = None):
        """GET one segment's bytes from `path`: yields (declared size or None, chunk
        iterator), bounded by `max_bytes` and by the slowest acceptable rate; each
        chunk `pace`d before it is handed on."""
        async with self.stream("GET", path) as response:
            declared = response.headers.get("content-length")
            size = int(declared) if declared and declared.isdigit() else None
            if size is not None and size > max_bytes:
                raise PeerError(self.url, f"{what}: {size} bytes is over the limit")
            deadline = trio.current_time() + self.transfer_deadline(
                size if size is not None else max_bytes)

            async def chunks() -> AsyncIterator[bytes]:
                nonlocal deadline
                with self.errors():
                    async for chunk in response.aiter_raw():
                        if trio.current_time() > deadline:
                            raise PeerError(self.url, f"{what}: sent slower than "
                                            f"{MIN_RATE} bytes/s")
                        if pace is not None:
                            deadline += await pace(len(chunk))
                        yield chunk

            yield size, chunks()


class MovableDeadline:
    """An exchange's deadline that time spent waiting for our own bandwidth limit
    moves later (set by `Transport.exchange`)."""

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None

    def move(self, seconds: float) -> None:
        if self.scope is not None and seconds > 0:
            self.scope.deadline += seconds
