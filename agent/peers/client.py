"""The typed API of a segsync peer (`/v1`), and the one factory that makes clients.

`ClientFactory` is built once from the configuration (token, node name, timeouts;
its TLS side, `agent.peers.tls.ClientTls`) and makes a `PeerClient` for any peer. A client is
an async context manager: leaving it closes its connections.

The plumbing (gate, deadlines, bounded reads, error translation) is in
`agent.peers.transport`; the batch-fetch reply is parsed by `agent.peers.batch_reader`.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

import httpx
import trio

from protocol import endpoints as ep
from protocol import limits
from protocol import messages as m
from protocol.names import SegmentName
from protocol.scrub import ServedBytesCheck

from ..archive.served import read_checked
from .bandwidth import Bandwidth, PeerPacing, requester_key
from .batch_reader import fetched_items
from .legacy_client import LegacyClient
from .peer_set import Peer
from .threaded_exchange import FetchTarget, OpenSink, Settle, connects_directly
from .threaded_fetch import fetch as threaded_fetch
from .tls import ClientTls
from .transport import (
    CALL_DEADLINE_FACTOR,
    MIN_RATE,
    MovableDeadline,
    PeerError,
    Transport,
    tune_httpcore,
)
from .transport_client import TransportClient

__all__ = ["ClientFactory", "PeerClient", "PeerError", "MIN_RATE", "Withdrawn"]

READ_CHUNK = 1024 * 1024  # bytes read per thread hop when uploading


class Withdrawn(Exception):
    """An upload stopped before its first byte: the segment may no longer be sent
    (its tombstone appeared after the offer)."""


class PeerClient(TransportClient):
    """Typed calls to one peer. Make it with `ClientFactory.client`. Without a
    `fetch_target` (a peer behind a proxy, say), every fetch stays on httpx (`fetch`),
    else a batch fetch runs in a worker thread (`fetch_into`)."""

    async def call(self, path: str, message: m.Message,
                   expect: type[m.Message] | tuple[type[m.Message], ...],
                   max_reply: int = limits.MAX_REPLY_BYTES,
                   headers: dict[str, str] | None = None) -> m.Message:
        """POST a message, return the decoded reply of the expected type."""
        t = self.transport
        status, data = await t.exchange(
            "POST", path, content=m.encode(message), max_reply=max_reply,
            deadline=self.timeout * CALL_DEADLINE_FACTOR,
            headers={"content-type": "application/msgpack", **(headers or {})})
        return t.decode_reply(status, data, expect, max_reply)

    # ---- push ----

    async def offer(self, name: SegmentName, size: int) -> str:
        reply = await self.call(ep.OFFER, m.Offer(name.path, size), m.OfferReply,
                                limits.MAX_REQUEST_BYTES)
        return reply.status  # type: ignore[attr-defined]

    async def offer_deferrable(self, name: SegmentName, size: int
                               ) -> m.OfferReply | m.OfferLater:
        """An offer that says we understand the OfferLater reply (downloader-aware
        push): the peer may answer OfferLater instead of want."""
        reply = await self.call(ep.OFFER, m.Offer(name.path, size),
                                (m.OfferReply, m.OfferLater), limits.MAX_REQUEST_BYTES,
                                {ep.OFFER_LATER_HEADER: "1"})
        return reply  # type: ignore[return-value]

    async def send_tombstone(self, name: SegmentName) -> str:
        message = m.Tombstone(name.tombstone_path)
        await self.pacing.send(len(m.encode(message)), None)  # live, ahead of catch-up
        reply = await self.call(ep.TOMBSTONE, message, m.Ack, limits.MAX_REQUEST_BYTES)
        return reply.status  # type: ignore[attr-defined]

    async def upload(self, name: SegmentName, file_path: Path,
                     withdrawn: Callable[[], bool] = lambda: False,
                     size: int | None = None) -> tuple[str, int]:
        """Stream a local segment to the peer. Returns (ack status, bytes sent).
        RottenBytes if the file does not hash to its name: its last chunk is then
        never sent, so the peer gets no complete copy. `withdrawn()` (blocking, asked
        in the thread that reads the first chunk) True: Withdrawn, and the request
        ends before its first byte of body (the peer stores nothing). `size`: the
        file's, known already (a segment's bytes never change): the file is then
        opened in the thread hop that reads its first chunk, not one of its own (a
        hop on the push path is a wake-up on a busy node); FileNotFoundError if it
        is gone, before any byte is sent."""
        t = self.transport
        f = None if size is not None else await trio.to_thread.run_sync(open, file_path, "rb")
        moved = MovableDeadline()
        try:
            if size is None:
                assert f is not None
                size = os.fstat(f.fileno()).st_size
            check = ServedBytesCheck(name.path, name.hash, size)

            def read(nbytes: int, first: bool) -> bytes:
                nonlocal f
                if first and withdrawn():
                    raise Withdrawn(f"{name.path}: withdrawn before its first byte")
                if f is None:
                    f = open(file_path, "rb")
                return read_checked(f, nbytes, check) if nbytes else b""

            async def body() -> AsyncIterator[bytes]:
                left, first = size, True
                while left > 0 or first:
                    chunk = await trio.to_thread.run_sync(read, min(READ_CHUNK, left), first)
                    first = False
                    if not chunk and not left:
                        return  # an empty file: nothing to send
                    if not chunk:
                        raise PeerError(self.url, f"{file_path} shrank while sending")
                    left -= len(chunk)
                    moved.move(await self.pacing.send(len(chunk), name))
                    yield chunk

            # a reply is an Ack or an Error: never read more than that
            status, data = await t.exchange(
                "PUT", ep.segment_url(name.path), content=body(),
                max_reply=limits.MAX_REQUEST_BYTES, deadline=t.transfer_deadline(size),
                headers={"content-length": str(size), "content-type": "video/mp2t"},
                moved=moved)
        finally:
            if f is not None:
                f.close()
        ack = t.decode_reply(status, data, m.Ack, limits.MAX_REQUEST_BYTES)
        return ack.status, size  # type: ignore[attr-defined]

    # ---- pull ----

    async def pair_digests(self, first: str, last: str) -> m.PairDigests:
        return await self.call(ep.PAIR_DIGESTS, m.PairDigestsRequest(first, last),
                               m.PairDigests)  # type: ignore[return-value]

    async def hour_digests(self, channel: str, quality: str, first: str, last: str
                           ) -> m.HourDigests:
        return await self.call(ep.HOUR_DIGESTS,
                               m.HourDigestsRequest(channel, quality, first, last),
                               m.HourDigests)  # type: ignore[return-value]

    async def listing(self, channel: str, quality: str, hour: str) -> m.Listing:
        return await self.call(ep.LISTING, m.ListingRequest(channel, quality, hour),
                               m.Listing)  # type: ignore[return-value]

    async def status(self) -> m.StatusReply:
        return await self.call(ep.STATUS, m.StatusRequest(),
                               m.StatusReply)  # type: ignore[return-value]

    async def ping(self) -> None:
        """GET /healthz within one deadline; PeerError if the peer does not answer 200."""
        status, _ = await self.transport.exchange(
            "GET", ep.HEALTHZ, max_reply=limits.MAX_REQUEST_BYTES, deadline=self.timeout)
        if status != 200:
            raise PeerError(self.url, f"HTTP {status}", status)

    def segment_path(self, name: SegmentName) -> str:
        return ep.segment_url(name.path)

    async def probe(self, hour: str) -> tuple[int, bytes]:
        """A pair-digests request over one hour, whatever the answer: (status, body).
        What a peer kind probe asks first (`agent.peers.kinds`)."""
        return await self.transport.exchange(
            "POST", ep.PAIR_DIGESTS, content=m.encode(m.PairDigestsRequest(hour, hour)),
            max_reply=limits.MAX_REPLY_BYTES, deadline=self.timeout,
            headers={"content-type": "application/msgpack"})

    @asynccontextmanager
    async def fetch(self, names: list[SegmentName], max_bytes: int):
        """Batch download (POST /v1/fetch): yields an async iterator of
        `(name, size, chunks)` in the order asked, `size` and `chunks` None for a
        segment the peer does not serve. Chunks a consumer leaves unread are skipped.
        A peer without the endpoint answers 404 or 405: a PeerError with that status."""
        by_path = {name.path: name for name in names}
        body = m.encode(m.FetchRequest(list(by_path)))
        t = self.transport
        async with t.stream("POST", ep.FETCH, content=body) as response:
            items = fetched_items(t, response, by_path, max_bytes, self.pacing.receive)
            try:
                yield items
            finally:
                await items.aclose()

    async def fetch_into(self, names: list[SegmentName], max_bytes: int,
                         open_sink: OpenSink, settle: Settle) -> None:
        """Batch download in a worker thread (`agent.peers.threaded_fetch`): each
        segment's bytes go to `open_sink(name, size)` as they are read, and each is
        `settle`d in trio once it ended (or the peer said it does not serve it).
        Under the same gate as every other exchange; needs `fetch_target`."""
        assert self.fetch_target is not None
        pacing = self.pacing
        async with self.transport.gate:
            await threaded_fetch(self.fetch_target, names, max_bytes, open_sink, settle,
                                 pacing.receive, pacing.download_limited)


class ClientFactory:
    """Makes clients for peers, all with the same credentials, identity and timeouts.
    Built once from the configuration."""

    def __init__(self, token: str | None = None, node_name: str = "",
                 timeout: float = 10.0, connect_timeout: float = 2.0,
                 tls: ClientTls | None = None, bandwidth: Bandwidth | None = None) -> None:
        tune_httpcore()
        self.bandwidth = bandwidth  # the node's limits every client's transfers take from
        self.token = token
        self.node_name = node_name
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        # trust (a cluster CA, else the default bundle) and, for mutual TLS, the
        # certificate presented; a node shares it with its reloader (agent/peers/tls.py)
        self.tls = tls or ClientTls()

    @classmethod
    def from_config(cls, cfg, tls: ClientTls | None = None,
                    bandwidth: Bandwidth | None = None) -> "ClientFactory":
        """`tls`: a node's own (kept current by its reloader); else built from the
        configuration's tls-ca/tls-cert/tls-key. `bandwidth`: the node's limits."""
        return cls(cfg.token, cfg.node_name, timeout=cfg.request_timeout,
                   tls=tls or ClientTls.from_config(cfg), bandwidth=bandwidth)

    def pacing(self, peer: Peer | str) -> PeerPacing:
        """What a client of `peer` takes from the node's limits. Its fair-share key is
        the one the server gives the same node when it asks us (`requester_key`)."""
        name = peer.name if isinstance(peer, Peer) else Peer.from_url(peer).name
        return PeerPacing(self.bandwidth, requester_key(name.encode(), None))

    def tls_context(self):
        """The one verifying TLS context of every client of this factory, built on
        first use: building one (loading the CA bundle) costs ~25 ms of CPU."""
        return self.tls.context

    def client(self, peer: Peer | str, concurrency: int = 8,
               timeout: float | None = None) -> PeerClient:
        """A client of a segsync peer's `/v1` API."""
        transport = self.transport(peer, concurrency, timeout, segsync=True)
        return PeerClient(transport, self.pacing(peer), self.fetch_target(transport, True))

    def wubloader_client(self, peer: Peer | str, concurrency: int = 8,
                         timeout: float | None = None) -> LegacyClient:
        """A client of a wubloader node's read API (`agent.peers.legacy_client`)."""
        transport = self.transport(peer, concurrency, timeout, segsync=False)
        return LegacyClient(transport, self.pacing(peer),
                            self.fetch_target(transport, False))

    def fetch_target(self, transport: Transport, segsync: bool) -> FetchTarget | None:
        """How a worker thread reaches the peer, as its httpx client does; None for a
        peer behind a proxy from the environment (downloads stay on httpx)."""
        if not connects_directly(transport.url):
            return None
        context = self.tls.context if transport.url.startswith("https:") else None
        return FetchTarget.of(transport, self.headers(segsync), context,
                              self.connect_timeout)

    def headers(self, segsync: bool) -> dict[str, str]:
        """What every request of a client sends. A wubloader node is sent neither the
        cluster's token nor our node name: it has no use for them."""
        headers = {"user-agent": "segsync"}
        if self.token and segsync:
            headers["authorization"] = f"Bearer {self.token}"
        if self.node_name and segsync:
            headers["x-segsync-node"] = self.node_name
        return headers

    def transport(self, peer: Peer | str, concurrency: int, timeout: float | None,
                  segsync: bool) -> Transport:
        """The gated connection pool of one client (`headers` says what it sends)."""
        url = peer.url if isinstance(peer, Peer) else Peer.from_url(peer).url
        timeout = self.timeout if timeout is None else timeout
        http = httpx.AsyncClient(
            base_url=url,
            headers=self.headers(segsync),
            timeout=httpx.Timeout(timeout, connect=min(self.connect_timeout, timeout),
                                  pool=timeout),
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency),
            follow_redirects=False,
            # a plain-http peer never does a TLS handshake (no redirects are followed):
            # no CA bundle to load for it
            verify=self.tls.verify_for(url),
        )
        return Transport(url, http, concurrency, timeout)
