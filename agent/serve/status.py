"""The node's status report (`POST /v1/status`, `segsync status`): its peers as push
and backfill see them, whether each answers right now, and the state of the sources
the peer list is read from (peers file, nodes database)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable, Sequence

import trio

from protocol import messages as m
from protocol.peerkind import PeerKind

from ..archive.index import ArchiveIndex
from ..peers.client import ClientFactory, PeerError
from ..peers.kinds import PeerKinds
from ..peers.peer_set import Peer, PeerSet
from ..pull.backfill import Backfiller
from ..push.pusher import Pusher
from ..push.recording import DownloaderTracker

PROBE_TIMEOUT = 2.0


class StatusReport:
    def __init__(self, node_name: str, peers: PeerSet, clients: ClientFactory,
                 index: ArchiveIndex, pusher: Pusher, backfiller: Backfiller,
                 url: Callable[[], str | None], kinds: PeerKinds,
                 sources: Sequence[Callable[[], m.PeerSourceStatus]] = (),
                 scrub: Callable[[], m.ScrubStatus] | None = None,
                 downloader: DownloaderTracker | None = None,
                 tls: Callable[[], m.TlsStatus | None] = lambda: None,
                 files: Callable[[], dict[str, int]] | None = None,
                 index_status: Callable[[], m.IndexStatus | None] = lambda: None,
                 bandwidth: Callable[[], list[m.BandwidthStatus]] | None = None) -> None:
        self.files = files  # chat batch and extras file counts
        self.bandwidth = bandwidth  # the limits, rates and waits per direction
        self.node_name = node_name
        self.kinds = kinds
        self.peers = peers
        self.clients = clients
        self.index = index
        self.pusher = pusher
        self.backfiller = backfiller
        self.url = url
        self.sources = sources
        self.scrub = scrub  # the scrub's counts and lost segments
        self.downloader = downloader  # downloader-aware push counters
        self.tls = tls  # the served certificate as status shows it (agent/peers/tls.py)
        self.index_status = index_status  # the index's own (agent/archive/index_keeper.py)
        self.started_at = time.time()

    async def probe_peers(self, timeout: float = PROBE_TIMEOUT) -> dict[str, str | None]:
        """Ask every peer's /healthz (a wubloader node's /files) now, in parallel:
        url -> None (answered) or the error. A peer whose kind is unknown is probed
        for it first."""
        out: dict[str, str | None] = {}

        async def probe(peer: Peer) -> None:
            with trio.move_on_after(timeout):
                try:
                    await self.kinds.kind(peer)
                except PeerError:
                    pass  # the ping below says why
            make = (self.clients.wubloader_client
                    if self.kinds.known(peer) is PeerKind.WUBLOADER else self.clients.client)
            try:
                async with make(peer, concurrency=1, timeout=timeout) as client:
                    await client.ping()
                out[peer.url] = None
            except PeerError as e:
                out[peer.url] = str(e)

        async with trio.open_nursery() as nursery:
            for peer in self.peers:
                nursery.start_soon(probe, peer)
        return out

    def report(self, probes: dict[str, str | None] | None = None) -> m.StatusReply:
        """What `segsync status` shows; `probes` (from probe_peers) decides "reachable"."""
        peers = []
        for peer in self.peers:
            push = self.pusher.state(peer)
            pull = self.backfiller.state(peer)
            reachable, reach_error = pull.round_ok, None
            if probes is not None and peer.url in probes:
                reach_error = probes[peer.url]
                reachable = reach_error is None
            kind = self.kinds.known(peer)
            peers.append(m.PeerStatus(
                url=peer.url, name=peer.name, kind=kind.value if kind else "unknown",
                queue_depth=push.queue_depth, last_push=push.last_success,
                push_error=push.last_error, push_dropped=push.dropped,
                push_deferred=push.deferred,
                last_round=pull.last_round, round_ok=pull.round_ok,
                round_error=pull.round_error, missing=pull.missing,
                reachable=reachable, reach_error=reach_error,
            ))
        # its fields are named as the reply's
        deferral = {}
        if self.downloader is not None:
            deferral = {**asdict(self.downloader.counts()),
                        "recorded_pairs": self.downloader.recorded_pairs()}
        return m.StatusReply(
            node=self.node_name, url=self.url() or "", started_at=self.started_at,
            time=time.time(),  # ages are computed against the node's own clock
            segments=self.index.segment_count(), peers=peers,
            peer_sources=[source() for source in self.sources],
            scrub=self.scrub() if self.scrub is not None else None, tls=self.tls(),
            index=self.index_status(),
            bandwidth=self.bandwidth() if self.bandwidth is not None else None,
            **deferral, **(self.files() if self.files is not None else {}),
        )

    async def probe_and_report(self) -> m.StatusReply:
        return self.report(await self.probe_peers())
