"""GETs one segment at a time, run in worker threads: how a peer without batch fetch
(a wubloader node's restreamer, `GET /segments/PATH`) is pulled from. Each thread
keeps one keep-alive connection and takes the next segment from a queue the threads
share; each reply's body is read into one reused buffer and written and hashed as it
is read, with no event-loop hop per read. What every threaded download shares (why
threads, the limits kept, the stop) is in `threaded_exchange`.

Why: from a wubloader node, every segment is an exchange of its own, and on httpx each
one climbed trio, httpcore, h11 and httpx for its head and each read of its body. A
catch-up from the restreamer stand-in then ran at 0.72x the native batch path
(issue 25's goal: 0.8x).

Each segment's exchange stands alone, as on httpx: a failure (a 404, a reset, a peer
too slow) is that segment's PeerError, handed to trio as its outcome, and the thread
goes on with the next one on another connection, while `keep_going()` says so.
"""

from __future__ import annotations

import collections
import http.client
import time
from typing import Callable

import trio

from protocol.names import SegmentName

from .threaded_exchange import (READ_BYTES, FetchTarget, OpenSink, Pace, SegmentSink,
                                Settle, ThreadedExchange, run_in_threads)
from .transport import MIN_RATE, PeerError


class ThreadedGets(ThreadedExchange):
    """One thread's GETs: segments from the shared `queue` until it is empty, the
    download was stopped, or `keep_going()` says no (the peer failed too often)."""

    def __init__(self, target: FetchTarget, queue: "collections.deque[SegmentName]",
                 path_of: Callable[[SegmentName], str], max_bytes: int,
                 open_sink: OpenSink, settle: Settle, pace: Pace | None,
                 limited: Callable[[], bool], keep_going: Callable[[], bool]) -> None:
        super().__init__(target, max_bytes, open_sink, settle, pace, limited)
        self.queue = queue
        self.path_of = path_of
        self.keep_going = keep_going
        self._view = memoryview(bytearray(READ_BYTES))

    def run(self) -> None:
        """Every GET this thread makes (in a worker thread), on one connection while
        the replies leave it clean; the last one is kept for the next download."""
        conn: http.client.HTTPConnection | None = None
        try:
            while not self._stopped and self.keep_going():
                try:
                    name = self.queue.popleft()  # atomic: the threads share the queue
                except IndexError:
                    break
                try:
                    conn, outcome = self._get(conn, name)
                except PeerError as e:  # its connection is closed
                    conn, outcome = None, e
                self._hand_over(name, outcome)  # with its bytes read, even if it broke
            if conn is not None:
                self._give_back(conn)
                conn = None
        finally:
            self._close(conn)

    def _get(self, conn: http.client.HTTPConnection | None, name: SegmentName
             ) -> tuple[http.client.HTTPConnection | None, object]:
        """One segment: (the connection to reuse, or None, and its outcome). Raises
        PeerError when the exchange failed, FetchStopped when trio stopped it; either
        way its connection is closed (`_request` closes what it opened)."""
        try:
            conn, response = self._request(conn, "GET", self.target.path(self.path_of(name)))
            self._expect_ok(response)
            size = None if response.chunked else response.length
            if size is not None and size > self.max_bytes:
                raise self._error(f"{name.path}: {size} bytes is over the limit")
            complete, outcome = self._read_body(response, name, size)
            if not complete or response.will_close:
                self._close(conn)  # bytes left unread, or the peer closes it
                return None, outcome
            response.close()  # read to its end: the connection takes the next request
            return conn, outcome
        except BaseException as e:
            self._close(conn)
            if isinstance(e, (OSError, http.client.HTTPException)):
                raise self._error(f"{name.path}: {type(e).__name__}: {e}") from None
            raise

    def _read_body(self, response: http.client.HTTPResponse, name: SegmentName,
                   size: int | None) -> tuple[bool, object]:
        """The reply's body into the segment's sink, a buffer at a time: (was it read
        to its end, the segment's outcome). A body without a Content-Length (chunked,
        or up to the connection's close) is bounded by `max_bytes`."""
        view = self._view
        if size is None:
            def read_into(buf: memoryview) -> int:
                data = response.read1(len(buf))  # decodes the chunks
                buf[:len(data)] = data
                return len(data)
        else:
            read_into = response.fp.readinto1  # its buffer holds what came with the head
        deadline = time.monotonic() + self.target.timeout + (
            (self.max_bytes if size is None else size) / MIN_RATE)
        sink: SegmentSink | None = self.open_sink(name, size)
        got = 0
        try:
            while True:
                want = READ_BYTES if size is None else min(READ_BYTES, size - got)
                if not want:
                    break
                n = self._fill(read_into, view, want, deadline)
                if size is None and not n:
                    break
                got += n
                if n:  # what arrived is counted, whatever becomes of the segment
                    deadline += self._take(n, name)
                if n < want and size is not None:
                    raise self._error(f"{name.path}: the reply ended after {got} "
                                      f"of {size} bytes")
                if got > self.max_bytes:
                    raise self._error(f"{name.path}: more than {self.max_bytes} bytes")
                outcome = self._write(sink, view[:n])
                if outcome is not None:
                    sink = None  # the rest of its bytes are not needed
                    return False, outcome
            outcome = self._end(sink)
            sink = None
            return True, outcome
        except BaseException as e:
            if sink is not None:
                sink.fail(e)
            raise


async def get_each(target: FetchTarget, names: list[SegmentName],
                   path_of: Callable[[SegmentName], str], threads: int, max_bytes: int,
                   open_sink: OpenSink, settle: Settle, pace: Pace | None = None,
                   limited: Callable[[], bool] = lambda: False,
                   keep_going: Callable[[], bool] = lambda: True,
                   gate: trio.Semaphore | None = None) -> None:
    """GET `names` (roughly in order) in up to `threads` worker threads, one
    connection each, each thread taking a slot of `gate` first. Returns once every
    segment handed over was settled: every failure is its segment's outcome, so
    nothing is raised but a stop. Cancelling it stops every thread and waits for it."""
    queue = collections.deque(names)
    jobs = [ThreadedGets(target, queue, path_of, max_bytes, open_sink, settle, pace,
                         limited, keep_going) for _ in range(min(threads, len(names)))]
    await run_in_threads(jobs, target.url, gate)

