"""Peers as values, and the one peer set that push, backfill, status and metrics follow.

A `Peer` is what the operator configured: a URL, a name (for status and metric
labels) and a kind. What is learned about a peer at run time (does it serve batch
fetches?) lives in its `PeerCapabilities`, kept by the `PeerSet` for as long as the
peer is configured, so every round and every client share one answer.

The set merges named sources (flags, a peers file, later a database); a source that
fails keeps its last good list. Consumers follow changes with `follow_peers`: one task
per peer, started when the peer appears, cancelled when it leaves.
"""

from __future__ import annotations

import enum
import logging
import urllib.parse
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

import httpx
import trio

log = logging.getLogger(__name__)


class PeerKind(str, enum.Enum):
    SEGSYNC = "segsync"  # speaks /v1: push and pull


def normalize_peer_url(url: str) -> str:
    """Validate and canonicalize a peer URL (http/https, host, optional port, no query)."""
    url = url.strip()
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as e:
        raise ValueError(f"peer URL {url!r}: {e}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"peer URL {url!r} must be http(s)://HOST[:PORT]")
    if parsed.query or parsed.fragment:
        raise ValueError(f"peer URL {url!r} must not have a query or fragment")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError(f"peer URL {url!r}: port must be 1-65535")
    return url.rstrip("/")


def default_peer_name(url: str) -> str:
    """A peer configured by URL alone is named by its host:port."""
    return urllib.parse.urlsplit(url).netloc or url


@dataclass(frozen=True)
class Peer:
    url: str
    name: str
    kind: PeerKind = PeerKind.SEGSYNC

    @classmethod
    def from_url(cls, url: str, name: str | None = None,
                 kind: PeerKind = PeerKind.SEGSYNC) -> "Peer":
        url = normalize_peer_url(url)
        return cls(url, name or default_peer_name(url), kind)

    def __str__(self) -> str:
        """For logs: the URL, and the name when it says more than the URL."""
        if self.name == default_peer_name(self.url):
            return self.url
        return f"{self.name} ({self.url})"


@dataclass
class PeerCapabilities:
    """What a peer turned out to support; None until known."""

    batch_fetch: bool | None = None


def merge_sources(sources: Iterable[list[Peer]]) -> list[Peer]:
    """Sources in order; a URL listed twice keeps its first entry (flags win)."""
    seen: set[str] = set()
    out = []
    for peers in sources:
        for peer in peers:
            if peer.url not in seen:
                seen.add(peer.url)
                out.append(peer)
    return out


class PeerSet:
    """The configured peers, merged from named sources, with change notification."""

    def __init__(self, static: Iterable[Peer] = ()) -> None:
        self._sources: dict[str, list[Peer]] = {"static": list(static)}
        self._peers = merge_sources(self._sources.values())
        self._capabilities: dict[str, PeerCapabilities] = {}
        self._changed = trio.Event()
        self.version = 0

    def __iter__(self):
        return iter(list(self._peers))

    def __len__(self) -> int:
        return len(self._peers)

    @property
    def peers(self) -> list[Peer]:
        return list(self._peers)

    def by_url(self, url: str) -> Peer | None:
        return next((p for p in self._peers if p.url == url), None)

    def set_source(self, source: str, peers: Iterable[Peer]) -> bool:
        """Replace one source's list; True (and consumers are woken) if the set changed."""
        self._sources[source] = list(peers)
        merged = merge_sources(self._sources.values())
        if merged == self._peers:
            return False
        self._peers = merged
        urls = {p.url for p in merged}
        for url in list(self._capabilities):
            if url not in urls:
                del self._capabilities[url]
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()
        return True

    def capabilities(self, peer: Peer) -> PeerCapabilities:
        caps = self._capabilities.get(peer.url)
        if caps is None:
            caps = self._capabilities[peer.url] = PeerCapabilities()
        return caps

    async def wait_changed(self, version: int) -> None:
        """Return once the set differs from `version`."""
        while self.version == version:
            await self._changed.wait()


async def follow_peers(
    peers: PeerSet, run_peer: Callable[[Peer, bool], Awaitable[None]],
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `run_peer(peer, at_start)` for every peer in the set, for as long as it is
    in the set: started when it appears (`at_start` is True for the peers known when
    following began), cancelled when it leaves or changes."""
    running: dict[Peer, trio.CancelScope] = {}
    at_start = True
    async with trio.open_nursery() as nursery:
        while True:
            version = peers.version
            current = peers.peers
            for peer in list(running):
                if peer not in current:
                    running.pop(peer).cancel()
            for peer in current:
                if peer not in running:
                    scope = running[peer] = trio.CancelScope()
                    nursery.start_soon(_run_in_scope, scope, run_peer, peer, at_start)
            if at_start:
                task_status.started()
                at_start = False
            await peers.wait_changed(version)


async def _run_in_scope(scope: trio.CancelScope, run_peer, peer: Peer, at_start: bool) -> None:
    with scope:
        await run_peer(peer, at_start)
