"""Heal: fetch one segment again from the peers, through the ordinary download and
accept paths (`PeerClient.download`, or `LegacyClient.download` from a wubloader node;
`Ingest.accept_segment`), so a healed copy is verified like every download."""

from __future__ import annotations

import logging

from protocol.names import SegmentName
from protocol.peerkind import PeerKind

from ..archive.ingest import Ingest
from ..archive.store import WriteRejected
from ..peers.client import ClientFactory, PeerError
from ..peers.kinds import PeerKinds
from ..peers.peer_set import Peer, PeerSet

log = logging.getLogger(__name__)


class PeerHealer:
    """`await healer(name)`: True once the segment is back in the archive, from the
    first peer of the set (in its order) that serves a copy hashing to its name."""

    def __init__(self, peers: PeerSet, clients: ClientFactory, kinds: PeerKinds,
                 ingest: Ingest, max_segment_bytes: int) -> None:
        self.peers = peers
        self.clients = clients
        self.kinds = kinds
        self.ingest = ingest
        self.max_segment_bytes = max_segment_bytes

    async def __call__(self, name: SegmentName) -> bool:
        for peer in self.peers:
            try:
                async with await self._client(peer) as client:
                    async with client.download(name, self.max_segment_bytes) as (size, chunks):
                        status = await self.ingest.accept_segment(name, size, chunks,
                                                                  source="heal")
            except PeerError as e:
                log.info("heal %s from %s: %s", name.path, peer, e)
                continue
            except WriteRejected as e:  # the peer's copy is bad too (or tombstoned here)
                log.warning("heal %s from %s refused: %s", name.path, peer, e)
                if e.reason == "tombstoned":
                    return False
                continue
            except OSError as e:  # our disk: no other peer would fare better
                log.error("heal %s: storing: %s", name.path, e)
                return False
            return status in ("stored", "have")  # else tombstoned here since
        return False

    async def _client(self, peer: Peer):
        """A client speaking the peer's kind (probed if unknown; PeerError if it
        cannot be told now)."""
        if await self.kinds.kind(peer) is PeerKind.WUBLOADER:
            return self.clients.wubloader_client(peer, concurrency=1)
        return self.clients.client(peer, concurrency=1)
