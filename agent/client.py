"""HTTP client for one peer: typed calls over httpx, gated and bounded.

Every request passes a `trio.Semaphore` before it reaches httpx's pool (httpx can
leak pool slots when requests are cancelled while queued). Replies are read with a
hard size limit and decoded by the bounded protocol decoder.
"""

from __future__ import annotations

import os
from collections import deque
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import AsyncIterator

import httpcore
import httpx
import trio

from protocol import limits
from protocol import messages as m
from protocol.errors import ProtocolError
from protocol.fetchstream import FetchStreamReader, ItemEnd, ItemMissing, ItemStart
from protocol.names import Kind, SegmentName
from protocol.recording import LATER_HEADER, LATER_HEADER_VALUE

READ_CHUNK = 1024 * 1024  # bytes read per thread hop when uploading
# httpx's timeouts bound each read or write, not a whole exchange: a peer that drips one
# byte per second would hold a request forever. Every exchange also has a deadline:
# control messages `CALL_DEADLINE_FACTOR * timeout`, transfers `timeout + bytes / MIN_RATE`.
CALL_DEADLINE_FACTOR = 3
MIN_RATE = 64 * 1024  # bytes per second
# httpcore reads a response 64 KiB at a time, and every read climbs the whole
# trio/httpcore/h11/httpx stack, about 100 us of CPU: during a backfill that stack is
# most of the client's CPU. Reading up to 1 MiB at once (what the socket holds, so a
# read never waits for more) cuts the climbs and the client's CPU by a quarter to a
# third (bench/backfill_throughput.py). `READ_NUM_BYTES` is a class constant of
# httpcore's exported HTTP/1.1 connection; tests/test_client_tuning.py fails if an
# httpcore release drops it. Memory stays bounded: one read per connection at a time.
RESPONSE_READ_BYTES = 1024 * 1024
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = RESPONSE_READ_BYTES

_tls_context = None


def shared_tls_context():
    """One verifying TLS context for every client, built on first use. Building one
    (loading the CA bundle) costs ~25 ms of CPU, which each backfill round would
    otherwise pay per peer for a client it makes and drops, even over plain http."""
    global _tls_context
    if _tls_context is None:
        _tls_context = httpx.create_ssl_context()
    return _tls_context


class PeerError(Exception):
    """A peer that could not be reached, or answered something unusable."""

    def __init__(self, peer: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{peer}: {message}")
        self.peer = peer
        self.status = status


def normalize_peer_url(url: str) -> str:
    """Validate and canonicalize a peer URL (http/https, host, optional port, no query)."""
    url = url.strip()
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"peer URL {url!r} must be http(s)://HOST[:PORT]")
    if parsed.query or parsed.fragment:
        raise ValueError(f"peer URL {url!r} must not have a query or fragment")
    return url.rstrip("/")


class PeerClient:
    def __init__(
        self, url: str, token: str | None = None, node_name: str = "",
        concurrency: int = 8, connect_timeout: float = 2.0, timeout: float = 10.0,
    ) -> None:
        self.url = normalize_peer_url(url)
        headers = {"user-agent": "segsync"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        if node_name:
            headers["x-segsync-node"] = node_name
        self.gate = trio.Semaphore(concurrency)
        self.timeout = timeout
        self.batch_fetch = True  # until the peer turns out not to have /v1/fetch
        self.http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=timeout),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,
            # a plain-http peer never does a TLS handshake (no redirects are followed):
            # no CA bundle to load for it
            verify=shared_tls_context() if self.url.startswith("https:") else False,
        )

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.http.aclose()

    # ---- plumbing ----

    async def _read_limited(self, response: httpx.Response, limit: int) -> bytes:
        buf = bytearray()
        async for chunk in response.aiter_raw():
            buf += chunk
            if len(buf) > limit:
                raise PeerError(self.url, f"reply larger than {limit} bytes")
        return bytes(buf)

    @contextmanager
    def _deadline(self, seconds: float, what: str):
        """A whole-exchange deadline; running past it is a PeerError."""
        with trio.move_on_after(seconds) as scope:
            yield
        if scope.cancelled_caught:
            raise PeerError(self.url, f"{what}: no complete exchange within {seconds:.0f}s")

    def _error_text(self, status: int, body: bytes) -> str:
        try:
            err = m.decode(body, m.Error, limits.MAX_REQUEST_BYTES)
            return f"HTTP {status} {err.code}: {err.message}"
        except ProtocolError:
            return f"HTTP {status}"

    async def _raise_unless_ok(self, response: httpx.Response, what: str) -> None:
        """A streamed reply that is not 200: its (bounded) error body, read within the
        timeout, becomes a PeerError carrying the status."""
        if response.status_code != 200:
            with self._deadline(self.timeout, f"error reply for {what}"):
                data = await self._read_limited(response, limits.MAX_REQUEST_BYTES)
            raise PeerError(self.url, self._error_text(response.status_code, data),
                            response.status_code)

    async def call(self, path: str, message: m.Message, expect: type[m.Message],
                   max_reply: int = limits.MAX_REPLY_BYTES,
                   headers: dict[str, str] | None = None) -> m.Message:
        """POST a message, return the decoded reply of the expected type."""
        body = m.encode(message)
        async with self.gate:
            with self._deadline(self.timeout * CALL_DEADLINE_FACTOR, path):
                try:
                    async with self.http.stream(
                        "POST", path, content=body,
                        headers={"content-type": "application/msgpack", **(headers or {})},
                    ) as response:
                        data = await self._read_limited(response, max_reply)
                except httpx.HTTPError as e:
                    raise PeerError(self.url, f"{type(e).__name__}: {e}") from None
        return self._reply(response.status_code, data, expect, max_reply)

    def _reply(self, status: int, data: bytes, expect: type[m.Message],
               max_reply: int) -> m.Message:
        """A 200 reply decoded as `expect`; anything else is a PeerError saying why."""
        if status != 200:
            raise PeerError(self.url, self._error_text(status, data), status)
        try:
            return m.decode(data, expect, max_reply)
        except ProtocolError as e:
            raise PeerError(self.url, f"bad reply: {e}") from None

    # ---- push ----

    async def offer(self, name: SegmentName, size: int) -> str:
        reply = await self.call("/v1/offer", m.Offer(name.path, size), m.OfferReply,
                                limits.MAX_REQUEST_BYTES)
        return reply.status  # type: ignore[attr-defined]

    async def offer_deferrable(self, name: SegmentName, size: int) -> m.OfferReply:
        """An offer that says we understand "later" (see protocol/recording.py)."""
        return await self.call("/v1/offer", m.Offer(name.path, size), m.OfferReply,
                               limits.MAX_REQUEST_BYTES, {LATER_HEADER: LATER_HEADER_VALUE})

    async def send_tombstone(self, name: SegmentName) -> str:
        reply = await self.call("/v1/tombstone", m.Tombstone(name.tombstone_path), m.Ack,
                                limits.MAX_REQUEST_BYTES)
        return reply.status  # type: ignore[attr-defined]

    async def upload(self, name: SegmentName, file_path: Path) -> tuple[str, int]:
        """Stream a local segment to the peer. Returns (ack status, bytes sent)."""
        f = await trio.to_thread.run_sync(open, file_path, "rb")
        try:
            size = os.fstat(f.fileno()).st_size

            async def body() -> AsyncIterator[bytes]:
                left = size
                while left > 0:
                    chunk = await trio.to_thread.run_sync(f.read, min(READ_CHUNK, left))
                    if not chunk:
                        raise PeerError(self.url, f"{file_path} shrank while sending")
                    left -= len(chunk)
                    yield chunk

            async with self.gate:
                with self._deadline(self.timeout + size / MIN_RATE, f"upload {name.path}"):
                    try:
                        async with self.http.stream(
                            "PUT", f"/v1/segments/{name.path}", content=body(),
                            headers={"content-length": str(size),
                                     "content-type": "video/mp2t"},
                        ) as response:
                            # a reply is an Ack or an Error: never read more than that
                            data = await self._read_limited(response, limits.MAX_REQUEST_BYTES)
                    except httpx.HTTPError as e:
                        raise PeerError(self.url, f"{type(e).__name__}: {e}") from None
        finally:
            f.close()
        ack = self._reply(response.status_code, data, m.Ack, limits.MAX_REQUEST_BYTES)
        return ack.status, size  # type: ignore[attr-defined]

    # ---- pull ----

    async def pair_digests(self, first: str, last: str) -> m.PairDigests:
        return await self.call("/v1/pair-digests", m.PairDigestsRequest(first, last),
                               m.PairDigests)  # type: ignore[return-value]

    async def hour_digests(self, channel: str, quality: str, first: str, last: str
                           ) -> m.HourDigests:
        return await self.call("/v1/hour-digests",
                               m.HourDigestsRequest(channel, quality, first, last),
                               m.HourDigests)  # type: ignore[return-value]

    async def listing(self, channel: str, quality: str, hour: str) -> m.Listing:
        return await self.call("/v1/listing", m.ListingRequest(channel, quality, hour),
                               m.Listing)  # type: ignore[return-value]

    async def ping(self) -> None:
        """GET /healthz within one deadline; PeerError if the peer does not answer 200."""
        async with self.gate:
            with self._deadline(self.timeout, "/healthz"):
                try:
                    response = await self.http.get("/healthz")
                except httpx.HTTPError as e:
                    raise PeerError(self.url, f"{type(e).__name__}: {e}") from None
        if response.status_code != 200:
            raise PeerError(self.url, f"HTTP {response.status_code}", response.status_code)

    async def status(self) -> dict:
        body = m.encode(m.StatusRequest())
        async with self.gate:
            with self._deadline(self.timeout * CALL_DEADLINE_FACTOR, "/v1/status"):
                try:
                    async with self.http.stream("POST", "/v1/status", content=body) as response:
                        data = await self._read_limited(response, limits.MAX_REPLY_BYTES)
                except httpx.HTTPError as e:
                    raise PeerError(self.url, f"{type(e).__name__}: {e}") from None
        if response.status_code != 200:
            raise PeerError(self.url, self._error_text(response.status_code, data),
                            response.status_code)
        try:
            obj = m.unpack_bounded(data, limits.MAX_REPLY_BYTES)
        except ProtocolError as e:
            raise PeerError(self.url, f"bad status reply: {e}") from None
        if not isinstance(obj, dict):
            raise PeerError(self.url, "bad status reply")
        return obj

    @asynccontextmanager
    async def download(self, name: SegmentName, max_bytes: int):
        """Stream a segment's bytes: yields (declared size or None, chunk iterator)."""
        async with self.gate:
            try:
                async with self.http.stream("GET", f"/v1/segments/{name.path}") as response:
                    await self._raise_unless_ok(response, name.path)
                    declared = response.headers.get("content-length")
                    size = int(declared) if declared and declared.isdigit() else None
                    if size is not None and size > max_bytes:
                        raise PeerError(self.url, f"{name.path}: {size} bytes is over the limit")

                    deadline = trio.current_time() + self.timeout + (
                        size if size is not None else max_bytes) / MIN_RATE

                    async def chunks() -> AsyncIterator[bytes]:
                        try:
                            async for chunk in response.aiter_raw():
                                if trio.current_time() > deadline:
                                    raise PeerError(self.url, f"{name.path}: sent slower than "
                                                    f"{MIN_RATE} bytes/s")
                                yield chunk
                        except httpx.HTTPError as e:
                            raise PeerError(self.url, f"{type(e).__name__}: {e}") from None

                    yield size, chunks()
            except httpx.HTTPError as e:
                raise PeerError(self.url, f"{type(e).__name__}: {e}") from None

    @asynccontextmanager
    async def fetch(self, names: list[SegmentName], max_bytes: int):
        """Batch download (POST /v1/fetch): yields an async iterator of
        `(name, size, chunks)` in the order asked, `size` and `chunks` None for a
        segment the peer does not serve. Chunks a consumer leaves unread are skipped.
        A peer without the endpoint answers 404 or 405: a PeerError with that status."""
        paths = [name.path for name in names]
        by_path = dict(zip(paths, names))
        body = m.encode(m.FetchRequest(paths))
        async with self.gate:
            try:
                async with self.http.stream(
                    "POST", "/v1/fetch", content=body,
                    headers={"content-type": "application/msgpack"},
                ) as response:
                    await self._raise_unless_ok(response, "/v1/fetch")
                    items = self._fetched_items(response, by_path, max_bytes)
                    try:
                        yield items
                    finally:
                        await items.aclose()
            except httpx.HTTPError as e:
                raise PeerError(self.url, f"{type(e).__name__}: {e}") from None
            except ProtocolError as e:
                raise PeerError(self.url, f"bad fetch reply: {e}") from None

    async def _fetched_items(self, response: httpx.Response, by_path: dict[str, SegmentName],
                             max_bytes: int):
        reader = FetchStreamReader(list(by_path), max_bytes)
        raw = response.aiter_raw()
        pending: deque = deque()
        # each segment must arrive at MIN_RATE, each frame header within the timeout
        deadline = trio.current_time() + self.timeout

        async def next_event():
            while not pending:
                try:
                    chunk = await raw.__anext__()
                except StopAsyncIteration:
                    reader.finish()
                    raise PeerError(self.url, "fetch reply ended early") from None
                if trio.current_time() > deadline:
                    raise PeerError(self.url, f"fetch reply sent slower than {MIN_RATE} bytes/s")
                pending.extend(reader.feed(chunk))
            return pending.popleft()

        while not reader.done or pending:
            event = await next_event()
            if isinstance(event, ItemMissing):
                deadline = trio.current_time() + self.timeout
                yield by_path[event.path], None, None
                continue
            assert isinstance(event, ItemStart), event
            deadline = trio.current_time() + self.timeout + event.size / MIN_RATE
            ended = False

            async def chunks() -> AsyncIterator[bytes]:
                nonlocal ended
                while not ended:
                    item = await next_event()
                    if isinstance(item, ItemEnd):
                        ended = True
                    else:
                        yield item.data

            body = chunks()
            try:
                yield by_path[event.path], event.size, body
                async for _ in body:  # the consumer stopped early: skip the rest
                    pass
            finally:
                await body.aclose()
            deadline = trio.current_time() + self.timeout
        async for chunk in raw:  # nothing may follow the last answer
            reader.feed(chunk)
        reader.finish()


def tombstone_or_segment(kind: Kind) -> str:
    return "tombstone" if kind is Kind.TOMBSTONE else "segment"
