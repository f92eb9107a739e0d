"""What every download run in a worker thread shares, one batch fetch
(`threaded_fetch`) or GETs one segment at a time (`threaded_gets`): the connection,
the stop from trio, reads into one reused buffer under the transfer deadline, the
node's download limit, and the hand-over of each finished segment to trio.

Why threads: on the event loop, every read of a catch-up climbed trio, httpcore, h11
and httpx, and every write hopped to a thread and back. The client then used about
2 s of CPU per 600 MiB where a blocking reader against the same server uses 1.3 s,
and a 2-core node caught up at two thirds of that reader's speed (issue 25). A thread
does what `bench/copy_floor.py` does: read into the buffer, write, hash.

What stays as it was on httpx: the requests (the client's headers and TLS context),
every limit (the caller's segment size, MIN_RATE per segment, the timeout per read and
between segments), the node's bandwidth limit (with a limit set, each read waits for
it in trio), verification before anything is visible, and errors: every failure is a
PeerError, with the HTTP status when the peer answered one.

A peer reached through a proxy from the environment keeps the httpx path
(`connects_directly`): these connect directly. A thread is stopped from trio: a
cancelled download shuts its socket down, which ends a blocked read at once.

Connections are kept alive between downloads (`ConnectionPool`, one per client):
across the internet, over TLS, a new connection per batch would cost a handshake
(two round trips and the key exchange) every 32 segments. A pooled connection the
peer closed while it was idle is opened again, once, before any byte of the reply
(the request never reached the peer).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol, Sequence

import trio

from protocol import limits
from protocol.names import SegmentName

from .transport import MIN_RATE, PeerError, Transport

READ_BYTES = 1024 * 1024  # the reused buffer: what one read may take from the socket
# segments handed to trio and not yet settled: the thread goes on reading while they
# wait for the event loop (waiting for each one cost ~5 ms on a busy 2-core node, a
# third of the thread's time), and stops when this many wait
SETTLES_IN_FLIGHT = 4


class SegmentSink(Protocol):
    """Where one segment's bytes go, called in the download's thread (blocking calls)."""

    def write(self, data: memoryview) -> object | None:
        """Take bytes (valid only during the call). Not None: the segment's outcome
        already (it is here, say), and the rest of its bytes are not needed."""

    def end(self) -> object:
        """Every byte arrived: the segment's outcome (raises if they are bad)."""

    def fail(self, e: BaseException) -> None:
        """The segment will not be completed (its temp file goes)."""


# (name, size or None) -> the segment's sink, called in the thread when its bytes begin
OpenSink = Callable[[SegmentName, "int | None"], SegmentSink]
# (name, outcome, unpaced bytes), awaited in trio after each segment, in a task of its
# own (segments are settled side by side, in no set order): the outcome is what the
# sink's `end` returned, the exception its `write` or `end` raised, a PeerError for a
# segment whose own exchange failed (`threaded_gets`), or None for a segment the peer
# does not serve; the bytes not yet taken from the node's bandwidth limit are taken
# then. It owns the outcome: a verified temp file it does not commit (cancelled, say),
# it drops
Settle = Callable[[SegmentName, object, int], Awaitable[None]]
# (nbytes, name) -> seconds waited for the node's bandwidth limit, awaited in trio
Pace = Callable[[int, SegmentName], Awaitable[float]]


class FetchStopped(Exception):
    """Trio stopped the download (its caller was cancelled)."""


def connects_directly(url: str) -> bool:
    """No proxy from the environment applies to `url` (httpx, which trusts the
    environment, would send such a peer's requests through it)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not any(k in proxies for k in (parts.scheme, "all")):
        return True
    return bool(urllib.request.proxy_bypass_environment(parts.hostname or "", proxies))


# what a reused connection the peer closed while it was idle looks like at the next
# request: its reply never began
STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ConnectionAbortedError)


class ConnectionPool:
    """A client's idle keep-alive connections, shared by its worker threads (a lock
    guards the list); at most `max_idle` are kept, the rest closed. Closed with the
    client: a connection given back after that is closed at once."""

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._closed = False
        self._opened = 0  # connections made for this client

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def opened(self) -> int:
        """Connections made for this client so far (one per thread, not per download,
        while the peer keeps them open)."""
        return self._opened

    def count_opened(self) -> None:
        with self._lock:
            self._opened += 1

    def take(self) -> http.client.HTTPConnection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


@dataclass(frozen=True)
class FetchTarget:
    """Where and how a thread connects: what the peer's httpx client would use."""

    url: str
    headers: dict[str, str]
    ssl_context: ssl.SSLContext | None
    timeout: float
    connect_timeout: float
    pool: ConnectionPool = field(compare=False)

    @classmethod
    def of(cls, transport: Transport, headers: dict[str, str],
           ssl_context: ssl.SSLContext | None, connect_timeout: float) -> "FetchTarget":
        """A client's target: as many idle connections kept as its gate lets
        exchanges run at once."""
        return cls(transport.url, headers, ssl_context, transport.timeout,
                   min(connect_timeout, transport.timeout),
                   ConnectionPool(transport.concurrency))

    def path(self, path: str) -> str:
        """A request target: the peer URL's own path prefix, then `path` (quoted as
        httpx would: a validated segment path has nothing to quote)."""
        prefix = urllib.parse.urlsplit(self.url).path.rstrip("/")
        return urllib.parse.quote(prefix + path, safe="/:@!$&'()*+,;=-._~")


class ThreadedExchange:
    """One download's thread: `run` in a worker thread, `stop` from trio (see
    `run_in_threads`). Subclasses say what `run` asks for."""

    def __init__(self, target: FetchTarget, max_bytes: int, open_sink: OpenSink,
                 settle: Settle, pace: Pace | None, limited: Callable[[], bool]) -> None:
        self.target = target
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
        self._unpaced = 0  # bytes read, not taken from the limit, not yet handed over
        self._unpaced_for: SegmentName | None = None
        self._spawn: Callable[..., None] | None = None  # set by `run_in_threads`, in trio

    def run(self) -> None:
        raise NotImplementedError

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

    def _connect(self) -> http.client.HTTPConnection:
        """A new connection to the peer, its reads under the timeout."""
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
            conn.connect()  # within the connect timeout; a stop is seen once it is done
            self._watch(conn)
            conn.sock.settimeout(target.timeout)
        except BaseException:
            self._close(conn)
            raise
        target.pool.count_opened()
        return conn

    def _watch(self, conn: http.client.HTTPConnection) -> None:
        """`stop` shuts this connection's socket down from now on."""
        with self._lock:
            if self._stopped:
                conn.close()
                raise FetchStopped()
            self._sock = conn.sock

    def _unwatch(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self._sock is conn.sock:
                self._sock = None

    def _close(self, conn: http.client.HTTPConnection | None) -> None:
        if conn is not None:
            self._unwatch(conn)
            conn.close()

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        """A connection whose last reply was read to its end: kept for the next
        download (the client's pool), unless trio stopped this one."""
        self._unwatch(conn)
        if self._stopped:
            conn.close()
        else:
            self.target.pool.give(conn)

    def _request(self, conn: http.client.HTTPConnection | None, method: str, path: str,
                 body: bytes | None = None, headers: dict[str, str] | None = None
                 ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request and read its reply's head, on `conn` (a connection this
        thread used already), else on one from the pool, else on a new one. A reused
        connection the peer closed while idle is replaced by a new one, once. Any
        failure closes the connection."""
        fresh = False
        while True:
            reused = not fresh
            if conn is None or conn.sock is None:
                self._close(conn)
                conn = None if fresh else self.target.pool.take()
                if conn is None:
                    conn, reused = self._connect(), False
                else:
                    self._watch(conn)
            try:
                conn.request(method, path, body=body,
                             headers={**self.target.headers, **(headers or {})})
                return conn, conn.getresponse()
            except STALE_CONNECTION:
                self._close(conn)
                if not reused or self._stopped:
                    raise
                conn, fresh = None, True
            except BaseException:
                self._close(conn)
                raise

    def _expect_ok(self, response: http.client.HTTPResponse) -> None:
        """A reply other than 200 is the exchange's PeerError: its status, and what
        the peer said (`Transport.error_text`, as on httpx)."""
        if response.status != 200:
            data = self._read_error_body(response)
            raise self._error(Transport.error_text(response.status, data), response.status)

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

    def _fill(self, read_into: Callable[[memoryview], int], view: memoryview, want: int,
              deadline: float) -> int:
        """Read up to `want` bytes into `view` (fewer only at the end of the stream):
        one write and hash per MiB, not per read (a loopback read brings 64-400 KiB).
        Every read is checked against the transfer's deadline (a dripping peer is
        caught by it) and against a stop."""
        n = 0
        while n < want:
            got = read_into(view[n:want])
            if self._stopped:
                raise FetchStopped()
            if not got:
                break
            n += got
            if time.monotonic() > deadline:
                raise self._error(f"reply sent slower than {MIN_RATE} bytes/s")
        return n

    def _take(self, nbytes: int, name: SegmentName) -> float:
        """Bytes read for `name`: with a download limit set, wait for it in trio and
        return the seconds waited (the deadline moves by as much: the peer was not
        slow); without one, 0, and the bytes are counted once the segment is handed
        over (`Settle`'s unpaced bytes), or, if the download breaks first, once the
        thread ended (`count_broken`)."""
        if self.pace is not None and self.limited():
            return self._from_trio(self.pace, nbytes, name)
        self._unpaced += nbytes
        self._unpaced_for = name
        return 0.0

    async def count_broken(self) -> None:
        """In trio, after the thread failed: the bytes of its last segment that were
        read but never handed over are taken from the node's limits all the same."""
        if self._unpaced and self.pace is not None and self._unpaced_for is not None:
            unpaced, self._unpaced = self._unpaced, 0
            await self.pace(unpaced, self._unpaced_for)

    @staticmethod
    def _write(sink: SegmentSink, data: memoryview) -> object | None:
        """`sink.write`; what it raises (refused bytes, or the disk: not the peer) is
        the segment's outcome, its sink failed."""
        try:
            return sink.write(data)
        except Exception as e:
            sink.fail(e)
            return e

    @staticmethod
    def _end(sink: SegmentSink) -> object:
        """`sink.end`; what it raises is the segment's outcome, its sink failed."""
        try:
            return sink.end()
        except Exception as e:
            sink.fail(e)
            return e

    def _hand_over(self, name: SegmentName, outcome: object) -> None:
        """Settle a segment in trio without waiting for it (the thread reads on),
        unless SETTLES_IN_FLIGHT already wait; with it go its bytes not yet taken from
        the limit. An outcome is handed over even when the download was stopped
        meanwhile: its temp file is trio's to commit or drop."""
        with self._window:
            while self._settling >= SETTLES_IN_FLIGHT and not self._stopped:
                self._window.wait()
            self._settling += 1
        assert self._spawn is not None
        unpaced, self._unpaced = self._unpaced, 0
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
        """Await `afn` in trio; a cancelled caller stops the download."""
        try:
            return trio.from_thread.run(afn, *args)
        except trio.Cancelled:
            raise FetchStopped() from None


async def run_in_threads(jobs: Sequence[ThreadedExchange], url: str,
                         gate: trio.Semaphore | None = None) -> None:
    """Run each job in a worker thread of its own (each taking a slot of `gate`
    first); returns once every segment handed over was settled. The first job's
    PeerError is raised once all are done. Cancelling stops every thread (its socket
    is shut down) and waits for it."""
    errors: list[Exception] = []
    async with trio.open_nursery() as settles:
        token = trio.lowlevel.current_trio_token()
        for job in jobs:  # called in the thread: settle_one(*args) as a task of `settles`
            job._spawn = functools.partial(token.run_sync_soon, settles.start_soon,
                                           job.settle_one)

        async def run_one(job: ThreadedExchange) -> None:
            async with trio.open_nursery() as nursery:
                async def stop_when_cancelled() -> None:
                    try:
                        await trio.sleep_forever()
                    finally:
                        job.stop()

                nursery.start_soon(stop_when_cancelled)
                try:
                    # never abandoned (it is stopped), and on a limiter of its own: a
                    # download thread waits for its segments' commits, which take
                    # threads from trio's shared pool (40); were download threads of
                    # that pool, enough at once (max-concurrency) would hold it all
                    await trio.to_thread.run_sync(job.run, limiter=trio.CapacityLimiter(1))
                except Exception as e:  # raised below, outside the nurseries
                    errors.append(e)
                    if not isinstance(e, FetchStopped):
                        await job.count_broken()
                finally:
                    nursery.cancel_scope.cancel()

        async def gated(job: ThreadedExchange) -> None:
            async with gate if gate is not None else contextlib.nullcontext():
                await run_one(job)

        async with trio.open_nursery() as threads:
            for job in jobs:
                threads.start_soon(gated, job)
        # each thread's last hand-overs ran before its end was reported (trio runs
        # run_sync_soon callbacks in order): `settles` holds them all, and waits here
    if any(isinstance(e, FetchStopped) for e in errors):
        await trio.lowlevel.checkpoint()  # the cancellation that stopped it
        raise PeerError(url, "fetch stopped")
    if errors:
        raise errors[0]
