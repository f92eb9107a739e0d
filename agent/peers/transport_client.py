"""The shell every typed client shares (`PeerClient` of a segsync peer,
`LegacyClient` of a wubloader node): its transport, what it takes from the node's
bandwidth limits, and the two ways one segment at a time is downloaded: streamed on
httpx (`download`, for hole repair and heal), or many in worker threads
(`get_each_into`, for a catch-up from a peer without batch fetch).
"""

from __future__ import annotations

from typing import Callable

from protocol.names import SegmentName

from .bandwidth import PeerPacing
from .threaded_exchange import FetchTarget, OpenSink, Settle
from .threaded_gets import get_each
from .transport import Transport


class TransportClient:
    """A client's transport, closed when the client leaves `async with` (or by
    `aclose`), and what it takes from the node's bandwidth limits. `fetch_target`:
    how a worker thread reaches the peer; None (a peer behind a proxy, say) keeps
    every download on httpx."""

    def __init__(self, transport: Transport, pacing: PeerPacing | None = None,
                 fetch_target: FetchTarget | None = None) -> None:
        self.transport = transport
        self.pacing = pacing or PeerPacing(None, transport.url)
        self.url = transport.url
        self.timeout = transport.timeout
        self.fetch_target = fetch_target

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.fetch_target is not None:
            self.fetch_target.pool.close()  # the worker threads' idle connections
        await self.transport.aclose()

    def segment_path(self, name: SegmentName) -> str:
        """Where the peer serves one segment."""
        raise NotImplementedError

    def download(self, name: SegmentName, max_bytes: int):
        """Stream a segment's bytes: yields (declared size or None, chunk iterator)."""
        return self.transport.stream_segment(
            self.segment_path(name), name.path, max_bytes,
            pace=lambda n: self.pacing.receive(n, name))

    async def get_each_into(self, names: list[SegmentName], threads: int, max_bytes: int,
                            open_sink: OpenSink, settle: Settle,
                            keep_going: Callable[[], bool] = lambda: True) -> None:
        """GET each segment in up to `threads` worker threads (`agent.peers.
        threaded_gets`): each one's bytes go to `open_sink(name, size)` as they are
        read, and each is `settle`d in trio with its outcome (a PeerError when its own
        exchange failed). Each thread takes a slot of the gate every exchange passes;
        needs `fetch_target`."""
        assert self.fetch_target is not None
        pacing = self.pacing
        await get_each(self.fetch_target, names, self.segment_path, threads, max_bytes,
                       open_sink, settle, pacing.receive, pacing.download_limited,
                       keep_going, self.transport.gate)
