"""A batch fetch run in a worker thread: one blocking HTTP/1.1 exchange whose reply is
read into one reused buffer and handed, read by read, to the segment being written,
with no event-loop hop per read.

Why: on the event loop, every read of a catch-up climbed trio, httpcore, h11 and
httpx, and every write hopped to a thread and back. The client then used about 2 s of
CPU per 600 MiB where a blocking reader against the same server uses 1.3 s, and a
2-core node caught up at two thirds of that reader's speed (issue 25). Here the thread
does what `bench/copy_floor.py` does: read into the buffer, write, hash.

What stays as it was: the request (POST /v1/fetch with the client's headers and TLS
context), the reply's parser (`protocol.fetchstream`, every frame validated), every
limit (the caller's segment size, MIN_RATE per segment, the timeout per read and
between segments), the node's bandwidth limit (with a limit set, each read waits for
it in trio), verification before anything is visible, and errors: every failure of the
exchange is a PeerError, with the HTTP status when the peer answered one.

Each fetch opens its own connection (a batch is up to 32 segments: one handshake per
batch). A peer reached through a proxy from the environment keeps the httpx path
(`connects_directly`): this one connects directly. The thread is stopped from trio:
a cancelled fetch shuts the socket down, which ends a blocked read at once.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

import trio

from protocol import endpoints as ep
from protocol import limits
from protocol import messages as m
from protocol.errors import ProtocolError
from protocol.fetchstream import FetchStreamReader, ItemData, ItemEnd, ItemMissing, ItemStart
from protocol.names import SegmentName

from .transport import MIN_RATE, PeerError, Transport

READ_BYTES = 1024 * 1024  # the reused buffer: what one read may take from the socket
# segments handed to trio and not yet settled: the thread goes on reading while they
# wait for the event loop (waiting for each one cost ~5 ms on a busy 2-core node, a
# third of the thread's time), and stops when this many wait
SETTLES_IN_FLIGHT = 4


class SegmentSink(Protocol):
    """Where one segment's bytes go, called in the fetch's thread (blocking calls)."""

    def write(self, data: memoryview) -> object | None:
        """Take bytes (valid only during the call). Not None: the segment's outcome
        already (it is here, say), and the rest of its bytes are not needed."""

    def end(self) -> object:
        """Every byte arrived: the segment's outcome (raises if they are bad)."""

    def fail(self, e: BaseException) -> None:
        """The segment will not be completed (its temp file goes)."""


# (name, size) -> the segment's sink, called in the thread when its frame begins
OpenSink = Callable[[SegmentName, int], SegmentSink]
# (name, outcome, unpaced bytes), awaited in trio after each segment, in a task of its
# own (segments are settled side by side, in no set order): the outcome is
# what the sink's `end` returned, the exception its `write` or `end` raised, or None
# for a segment the peer does not serve; the bytes not yet taken from the node's
# bandwidth limit are taken then. It owns the outcome: a verified temp file it does
# not commit (cancelled, say), it drops
Settle = Callable[[SegmentName, object, int], Awaitable[None]]
# (nbytes, name) -> seconds waited for the node's bandwidth limit, awaited in trio
Pace = Callable[[int, SegmentName], Awaitable[float]]


class FetchStopped(Exception):
    """Trio stopped the fetch (its caller was cancelled)."""


def connects_directly(url: str) -> bool:
    """No proxy from the environment applies to `url` (httpx, which trusts the
    environment, would send such a peer's requests through it)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not any(k in proxies for k in (parts.scheme, "all")):
        return True
    return bool(urllib.request.proxy_bypass_environment(parts.hostname or "", proxies))


@dataclass(frozen=True)
class FetchTarget:
    """Where and how the fetch connects: what the peer's httpx client would use."""

    url: str
    headers: dict[str, str]
    ssl_context: ssl.SSLContext | None
    timeout: float
    connect_timeout: float

    @classmethod
    def of(cls, transport: Transport, headers: dict[str, str],
           ssl_context: ssl.SSLContext | None, connect_timeout: float) -> "FetchTarget":
        return cls(transport.url, headers, ssl_context, transport.timeout,
                   min(connect_timeout, transport.timeout))


class ThreadedFetch:
    """One batch fetch: `run` in a worker thread, `stop` from trio (see `fetch`)."""

    def __init__(self, target: FetchTarget, names: list[SegmentName], max_bytes: int,
                 open_sink: OpenSink, settle: Settle, pace: Pace | None,
                 limited: Callable[[], bool]) -> None:
        self.target = target
        self.names = names
        self.max_bytes = max_bytes
        self.open_sink = open_sink
        self.settle = settle
        self.pace = pace
        self.limited = limited  # is a bandwidth limit set now (read in the thread)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._stopped = False
        self._window = threading.Condition(self._lock)
        self._settling = 0  # segments handed to trio, not yet settled
        self._spawn: Callable[..., None] | None = None  # set by `fetch`, in trio

    def stop(self) -> None:
        """End the exchange from another thread: a blocked read returns at once."""
        with self._lock:
            self._stopped = True
            self._window.notify_all()
            if self._sock is not None:
                try:  # the plain socket call: an SSLSocket's own would touch its state
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def _error(self, message: str, status: int | None = None) -> Exception:
        """What a failed exchange raises: FetchStopped if trio stopped it (the failure
        is only the shut-down socket), else a PeerError."""
        if self._stopped:
            return FetchStopped()
        return PeerError(self.target.url, message, status)

    def run(self) -> None:
        """The whole exchange (in a worker thread)."""
        target = self.target
        parts = urllib.parse.urlsplit(target.url)
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=target.connect_timeout,
                context=target.ssl_context)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port,
                                              timeout=target.connect_timeout)
        try:
            try:
                conn.connect()
                with self._lock:
                    if self._stopped:
                        raise FetchStopped()
                    self._sock = conn.sock
                conn.sock.settimeout(target.timeout)
                body = m.encode(m.FetchRequest([n.path for n in self.names]))
                conn.request("POST", parts.path.rstrip("/") + ep.FETCH, body=body, headers={
                    **target.headers, "content-type": "application/msgpack"})
                response = conn.getresponse()
                if response.status != 200:
                    data = self._read_error_body(response)
                    raise self._error(Transport.error_text(response.status, data),
                                      response.status)
                if response.chunked or response.length is None:
                    raise self._error("fetch reply without a Content-Length")
                self._read_reply(response)
            except (OSError, http.client.HTTPException) as e:
                raise self._error(f"{type(e).__name__}: {e}") from None
            except ProtocolError as e:
                raise self._error(f"bad reply: {e}") from None
        finally:
            with self._lock:
                self._sock = None
            conn.close()

    def _read_error_body(self, response: http.client.HTTPResponse) -> bytes:
        """Up to MAX_REQUEST_BYTES of an error reply, within the timeout."""
        deadline = time.monotonic() + self.target.timeout
        data = bytearray()
        while len(data) <= limits.MAX_REQUEST_BYTES and time.monotonic() < deadline:
            more = response.read1(limits.MAX_REQUEST_BYTES + 1 - len(data))
            if not more:
                break
            data += more
        return bytes(data)

    def _hand_over(self, name: SegmentName, outcome: object, unpaced: int) -> None:
        """Settle a segment in trio without waiting for it (the thread reads on),
        unless SETTLES_IN_FLIGHT already wait. An outcome is handed over even when the
        fetch was stopped meanwhile: its temp file is trio's to commit or drop."""
        with self._window:
            while self._settling >= SETTLES_IN_FLIGHT and not self._stopped:
                self._window.wait()
            self._settling += 1
        assert self._spawn is not None
        self._spawn(name, outcome, unpaced)
        if self._stopped:
            raise FetchStopped()

    async def settle_one(self, name: SegmentName, outcome: object, unpaced: int) -> None:
        """In trio: `settle` one segment, then make room in the window."""
        try:
            await self.settle(name, outcome, unpaced)
        finally:
            with self._window:
                self._settling -= 1
                self._window.notify()

    def _from_trio(self, afn, *args):
        """Await `afn` in trio; a cancelled caller stops the fetch."""
        try:
            return trio.from_thread.run(afn, *args)
        except trio.Cancelled:
            raise FetchStopped() from None

    def _read_reply(self, response: http.client.HTTPResponse) -> None:
        """The reply's body (Content-Length bytes) a buffer at a time, each socket read
        checked against the deadline (a dripping peer is caught by it), parsed and
        handed to the segment's sink; each segment handed to trio as it ends."""
        by_path = {n.path: n for n in self.names}
        reader = FetchStreamReader(list(by_path), self.max_bytes)
        view = memoryview(bytearray(READ_BYTES))
        source = response.fp  # its buffer holds what came with the response head
        left = response.length or 0
        timeout = self.target.timeout
        deadline = time.monotonic() + timeout  # for the next frame header
        name: SegmentName | None = None
        sink: SegmentSink | None = None
        outcome: object = None  # the current segment's, once known
        unpaced = 0
        try:
            while left:
                # fill the buffer: one parse, write and hash per MiB, not per read (a
                # loopback read brings 64-400 KiB)
                want, n = min(READ_BYTES, left), 0
                while n < want:
                    got = source.readinto1(view[n:want])
                    if self._stopped:
                        raise FetchStopped()
                    if not got:
                        break
                    n += got
                    if time.monotonic() > deadline:
                        raise self._error(
                            f"fetch reply sent slower than {MIN_RATE} bytes/s")
                if not n:
                    break
                left -= n
                for event in reader.feed(view[:n]):
                    if isinstance(event, ItemData):
                        if self.pace is not None and self.limited():
                            deadline += self._from_trio(self.pace, len(event.data), name)
                        else:
                            unpaced += len(event.data)
                        if sink is not None:
                            try:
                                outcome = sink.write(event.data)
                            except Exception as e:  # refused bytes, or the disk: not the peer
                                sink.fail(e)
                                outcome = e
                            if outcome is not None:
                                sink = None  # the rest of its bytes are skipped
                    elif isinstance(event, ItemStart):
                        name = by_path[event.path]
                        outcome, unpaced = None, 0
                        sink = self.open_sink(name, event.size)
                        deadline = time.monotonic() + timeout + event.size / MIN_RATE
                    elif isinstance(event, ItemEnd):
                        if sink is not None:
                            try:
                                outcome = sink.end()
                            except Exception as e:
                                sink.fail(e)
                                outcome = e
                        sink = None
                        self._hand_over(name, outcome, unpaced)
                        deadline = time.monotonic() + timeout
                    elif isinstance(event, ItemMissing):
                        self._hand_over(by_path[event.path], None, 0)
                        deadline = time.monotonic() + timeout
            reader.finish()
        except BaseException as e:
            if sink is not None:
                sink.fail(e)
            raise


async def fetch(target: FetchTarget, names: list[SegmentName], max_bytes: int,
                open_sink: OpenSink, settle: Settle, pace: Pace | None = None,
                limited: Callable[[], bool] = lambda: False) -> None:
    """Run one batch fetch in a worker thread; returns once every segment handed over
    was settled, raises PeerError if the exchange broke. Cancelling it stops the
    thread (its socket is shut down) and waits for it."""
    job = ThreadedFetch(target, names, max_bytes, open_sink, settle, pace, limited)
    error: Exception | None = None
    async with trio.open_nursery() as settles:
        token = trio.lowlevel.current_trio_token()
        job._spawn = lambda *args: token.run_sync_soon(settles.start_soon, job.settle_one,
                                                       *args)
        async with trio.open_nursery() as nursery:
            async def stop_when_cancelled() -> None:
                try:
                    await trio.sleep_forever()
                finally:
                    job.stop()

            nursery.start_soon(stop_when_cancelled)
            try:
                # never abandoned (it is stopped), and on a limiter of its own: a fetch
                # thread waits for its segments' commits, which take threads from
                # trio's shared pool (40); were fetch threads of that pool, enough
                # fetches at once (max-concurrency) would hold it all
                await trio.to_thread.run_sync(job.run, limiter=trio.CapacityLimiter(1))
            except Exception as e:  # raised below, outside the nurseries (not in a group)
                error = e
            finally:
                nursery.cancel_scope.cancel()
        # the thread's last hand-overs ran before its end was reported (trio runs
        # run_sync_soon callbacks in order): `settles` holds them all, and waits here
    if isinstance(error, FetchStopped):
        await trio.lowlevel.checkpoint()  # the cancellation that stopped it
        raise PeerError(target.url, "fetch stopped")
    if error is not None:
        raise error
