"""The consumer side of a batch fetch reply: framed segments as they stream in.

`protocol.fetchstream.FetchStreamReader` parses the frames (sans-I/O); this drives it
from an httpx response, under a deadline per segment (each must arrive at `MIN_RATE`,
each frame header within the timeout), and hands each segment to the consumer as an
iterator of its chunks.
"""

from __future__ import annotations

from collections import deque
from typing import AsyncIterator, Awaitable, Callable

import httpx
import trio

from protocol.fetchstream import FetchStreamReader, ItemEnd, ItemMissing, ItemStart
from protocol.names import SegmentName

from .transport import MIN_RATE, PeerError, Transport


async def fetched_items(t: Transport, response: httpx.Response,
                        by_path: dict[str, SegmentName], max_bytes: int,
                        pace: Callable[[int, SegmentName], Awaitable[float]] | None = None):
    """Yield `(name, size, chunks)` per asked segment, in order; `(name, None, None)` for
    one the peer does not serve. Bytes a consumer leaves unread are skipped. `pace`
    waits for the node's bandwidth limit before a chunk is handed on (the wait moves
    the segment's deadline)."""
    reader = FetchStreamReader(list(by_path), max_bytes)
    raw = response.aiter_raw()
    pending: deque = deque()
    deadline = trio.current_time() + t.timeout

    async def next_event():
        while not pending:
            with t.errors():
                try:
                    chunk = await raw.__anext__()
                except StopAsyncIteration:
                    reader.finish()
                    raise PeerError(t.url, "fetch reply ended early") from None
                if trio.current_time() > deadline:
                    raise PeerError(t.url, f"fetch reply sent slower than {MIN_RATE} bytes/s")
                pending.extend(reader.feed(chunk))
        return pending.popleft()

    while not reader.done or pending:
        event = await next_event()
        if isinstance(event, ItemMissing):
            deadline = trio.current_time() + t.timeout
            yield by_path[event.path], None, None
            continue
        assert isinstance(event, ItemStart), event
        deadline = trio.current_time() + t.transfer_deadline(event.size)
        ended = False

        name = by_path[event.path]

        async def chunks(name: SegmentName = name) -> AsyncIterator[bytes]:
            nonlocal ended, deadline
            while not ended:
                item = await next_event()
                if isinstance(item, ItemEnd):
                    ended = True
                else:
                    if pace is not None:
                        deadline += await pace(len(item.data), name)
                    yield item.data

        body = chunks()
        try:
            yield name, event.size, body
            async for _ in body:  # the consumer stopped early: skip the rest
                pass
        finally:
            await body.aclose()
        deadline = trio.current_time() + t.timeout
    with t.errors():
        async for chunk in raw:  # nothing may follow the last answer
            reader.feed(chunk)
        reader.finish()
