"""A batch fetch run in a worker thread: one blocking HTTP/1.1 exchange (POST
/v1/fetch) whose reply is read into one reused buffer, parsed by
`protocol.fetchstream` (every frame validated) and handed, read by read, to the
segment being written, with no event-loop hop per read. What every threaded download
shares (why threads, the limits kept, the stop) is in `threaded_exchange`.

A connection is kept for the next fetch once its reply was read to the end.
"""

from __future__ import annotations

import http.client
import time
from typing import Callable

from protocol import endpoints as ep
from protocol import messages as m
from protocol.errors import ProtocolError
from protocol.fetchstream import FetchStreamReader, ItemData, ItemEnd, ItemMissing, ItemStart
from protocol.names import SegmentName

from .threaded_exchange import (READ_BYTES, FetchTarget, OpenSink, Pace, SegmentSink,
                                Settle, ThreadedExchange, run_in_threads)
from .transport import MIN_RATE

__all__ = ["READ_BYTES", "ThreadedFetch", "fetch"]


class ThreadedFetch(ThreadedExchange):
    """One batch fetch: `run` in a worker thread, `stop` from trio (see `fetch`)."""

    def __init__(self, target: FetchTarget, names: list[SegmentName], max_bytes: int,
                 open_sink: OpenSink, settle: Settle, pace: Pace | None,
                 limited: Callable[[], bool]) -> None:
        super().__init__(target, max_bytes, open_sink, settle, pace, limited)
        self.names = names

    def run(self) -> None:
        """The whole exchange (in a worker thread)."""
        conn = None
        try:
            try:
                body = m.encode(m.FetchRequest([n.path for n in self.names]))
                conn, response = self._request(None, "POST", self.target.path(ep.FETCH),
                                               body, {"content-type": "application/msgpack"})
                self._expect_ok(response)
                if response.chunked or response.length is None:
                    raise self._error("fetch reply without a Content-Length")
                self._read_reply(response)
                response.close()  # read to its end: the connection takes the next request
                if not response.will_close:
                    self._give_back(conn)
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                raise self._error(f"{type(e).__name__}: {e}") from None
            except ProtocolError as e:
                raise self._error(f"bad reply: {e}") from None
        finally:
            self._close(conn)

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
        try:
            while left:
                n = self._fill(source.readinto1, view, min(READ_BYTES, left), deadline)
                if not n:
                    break
                left -= n
                for event in reader.feed(view[:n]):
                    if isinstance(event, ItemData):
                        assert name is not None
                        deadline += self._take(len(event.data), name)
                        if sink is not None:
                            outcome = self._write(sink, event.data)
                            if outcome is not None:
                                sink = None  # the rest of its bytes are skipped
                    elif isinstance(event, ItemStart):
                        name = by_path[event.path]
                        outcome = None
                        sink = self.open_sink(name, event.size)
                        deadline = time.monotonic() + timeout + event.size / MIN_RATE
                    elif isinstance(event, ItemEnd):
                        if sink is not None:
                            outcome = self._end(sink)
                        sink = None
                        self._hand_over(name, outcome)
                        deadline = time.monotonic() + timeout
                    elif isinstance(event, ItemMissing):
                        self._hand_over(by_path[event.path], None)
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
    await run_in_threads([job], target.url)
