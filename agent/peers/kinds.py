"""Which peers are segsync agents and which are wubloader nodes.

A peer's kind is what the config says (`peer-kinds`), else what a probe found, kept
in the peer's `PeerCapabilities` (the `PeerSet` forgets it with the peer). One probe
at a time per peer: backfill rounds, push workers and status share it. A wubloader
node is probed again `reprobe_after` seconds later (it may have moved to segsync
meanwhile); a segsync peer whose `/v1` goes missing is forgotten (`forget`) and
probed again when next needed. The decisions are `protocol.peerkind`'s.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Awaitable, Callable

import trio

from protocol import endpoints as ep
from protocol import legacy
from protocol.digests import hour_range
from protocol.errors import ProtocolError
from protocol.peerkind import PeerKind, classify_probe, is_segsync_reply, needs_probe

from .client import ClientFactory
from .peer_set import Peer, PeerSet
from .transport import PeerError

log = logging.getLogger(__name__)

REPROBE_AFTER = 600.0  # seconds
PROBE_TIMEOUT = 5.0  # seconds, at most, per question of a probe

Prober = Callable[[Peer], Awaitable[tuple[PeerKind | None, str]]]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def probe_kind(clients: ClientFactory, peer: Peer, hour: str
                     ) -> tuple[PeerKind | None, str]:
    """Ask the peer what it is: a segsync agent (`/v1` answers like segsync, even
    refusing our token), a wubloader node (no `/v1`, `GET /files` is a JSON list),
    or None (cannot tell now: down, failing). Returns (kind, what was seen).

    The `/v1` question is a pair-digests request over one `hour`: cheap for a segsync
    peer."""
    timeout = min(clients.timeout, PROBE_TIMEOUT)
    seen = []
    v1_status: int | None = None
    v1_is_segsync = False
    try:
        async with clients.client(peer, concurrency=1, timeout=timeout) as client:
            v1_status, data = await client.probe(hour)
        v1_is_segsync = is_segsync_reply(data)
        seen.append(f"/v1: HTTP {v1_status}")
    except PeerError as e:
        seen.append(f"/v1: {str(e).removeprefix(f'{peer.url}: ')}")
    files_status: int | None = None
    files_is_list = False
    if v1_status in (404, 405) and not v1_is_segsync:
        try:
            async with clients.wubloader_client(peer, concurrency=1, timeout=timeout) as wub:
                files_status, data = await wub.get(ep.files_url())
            seen.append(f"/files: HTTP {files_status}")
            legacy.decode_name_list(data)
            files_is_list = True
        except PeerError as e:
            seen.append(f"/files: {str(e).removeprefix(f'{peer.url}: ')}")
        except ProtocolError as e:
            seen.append(f"/files: {e}")
    kind = classify_probe(v1_status, v1_is_segsync, files_status, files_is_list)
    return kind, "; ".join(seen)


class PeerKinds:
    def __init__(self, peers: PeerSet, probe: Prober,
                 reprobe_after: float = REPROBE_AFTER) -> None:
        self.peers = peers
        self.probe = probe
        self.reprobe_after = reprobe_after
        self._probing: dict[str, trio.Event] = {}  # peer URL -> its probe finished
        self.last_error: dict[str, str] = {}  # peer URL -> why its last probe could not tell

    @classmethod
    def probing_with(cls, peers: PeerSet, clients: ClientFactory,
                     clock: Callable[[], dt.datetime] = utc_now) -> "PeerKinds":
        """Kinds found by `probe_kind` through `clients`, asking about the current hour."""
        async def probe(peer: Peer) -> tuple[PeerKind | None, str]:
            return await probe_kind(clients, peer, hour_range(clock(), 0)[1])
        return cls(peers, probe)

    def known(self, peer: Peer) -> PeerKind | None:
        """SEGSYNC or WUBLOADER if configured or found already, else None; never waits."""
        if peer.kind is not PeerKind.AUTO:
            return peer.kind
        return self.peers.capabilities(peer).kind

    def forget(self, peer: Peer) -> None:
        """A probed peer stopped answering like its kind: probe it when next needed."""
        caps = self.peers.capabilities(peer)
        if peer.kind is PeerKind.AUTO and caps.kind is not None:
            log.info("peer %s: kind forgotten, probing it again", peer)
            caps.kind = caps.kind_probed_at = None

    async def kind(self, peer: Peer) -> PeerKind:
        """The peer's kind, probing it if needed; PeerError if it cannot be told now."""
        caps = self.peers.capabilities(peer)
        while True:
            if not needs_probe(peer.kind, caps.kind, caps.kind_probed_at,
                               trio.current_time(), self.reprobe_after):
                kind = self.known(peer)
                assert kind is not None
                return kind
            running = self._probing.get(peer.url)
            if running is None:
                break
            before = caps.kind_probed_at
            await running.wait()
            if caps.kind_probed_at == before:  # that probe could not tell either
                if caps.kind is not None:
                    return caps.kind
                raise PeerError(peer.url, f"cannot tell its kind: "
                                f"{self.last_error.get(peer.url)}")
        done = self._probing[peer.url] = trio.Event()
        try:
            kind, seen = await self.probe(peer)
        finally:
            del self._probing[peer.url]
            done.set()
        if kind is None:
            self.last_error[peer.url] = seen
            if caps.kind is not None:  # a re-probe that failed: keep what we knew
                return caps.kind
            raise PeerError(peer.url, f"cannot tell its kind: {seen}")
        if caps.kind is not kind:
            log.info("peer %s is a %s peer (%s)", peer, kind.value, seen)
        caps.kind, caps.kind_probed_at = kind, trio.current_time()
        self.last_error.pop(peer.url, None)
        return kind
