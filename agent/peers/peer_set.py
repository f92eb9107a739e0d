"""Peers as values, and the one peer set that push, backfill, status and metrics follow.

A `Peer` is what the operator configured: a URL, a name (for status and metric
labels) and a kind (`auto` unless the config's `peer-kinds` says). What is learned
about a peer at run time (its kind, found by a probe; does it serve batch fetches?)
lives in its `PeerCapabilities`, kept by the `PeerSet` for as long as the
peer is configured, so every round and every client share one answer.

The set merges named sources (flags, a peers file, wubloader's nodes database); a
source that fails keeps its last good list. A source may name a peer (status and
metric labels) and may list this node itself (wubloader's node file and nodes table
do): an entry named like `--node-name` is left out. Consumers follow changes with
`follow_peers`: one task per peer, started when the peer appears, cancelled when it
leaves.
"""

from __future__ import annotations

import dataclasses
import logging
import urllib.parse
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Mapping

import httpx
import trio

from protocol.peerkind import PeerKind

__all__ = ["Peer", "PeerCapabilities", "PeerKind", "PeerSet", "follow_peers",
           "normalize_peer_url"]

log = logging.getLogger(__name__)


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
    kind: PeerKind = PeerKind.AUTO

    @classmethod
    def from_url(cls, url: str, name: str | None = None,
                 kind: PeerKind = PeerKind.AUTO) -> "Peer":
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
    kind: PeerKind | None = None  # what a probe found (SEGSYNC or WUBLOADER)
    kind_probed_at: float | None = None  # trio clock of that probe


def is_named(peer: Peer) -> bool:
    """Whether a source gave the peer a name (else it is named by its host:port)."""
    return peer.name != default_peer_name(peer.url)


@dataclass
class MergedPeers:
    """The peers to work with, and what the merge left out or could not name."""

    peers: list[Peer] = field(default_factory=list)
    this_node: list[Peer] = field(default_factory=list)  # entries named like this node
    conflicts: list[str] = field(default_factory=list)  # one sentence each


def merge_sources(sources: Iterable[list[Peer]], this_node: str | None = None) -> MergedPeers:
    """Sources in order (flags, peers file, nodes database): one peer per URL, in
    first-seen order, with the kind of its first entry and the first name a source
    gives it. An entry named `this_node` is this node (wubloader's `--localhost` rule):
    it is left out, with every other entry of its URL; a bare URL is never taken for
    this node. A name already naming another URL stays with the first; the later URL is
    kept under its host:port and the conflict reported."""
    sources = [list(peers) for peers in sources]
    own_urls = {p.url for peers in sources for p in peers
                if this_node is not None and p.name == this_node and is_named(p)}
    merged = MergedPeers()
    by_url: dict[str, Peer] = {}
    owner: dict[str, str] = {}  # name -> url
    for peers in sources:
        for peer in peers:
            if peer.url in own_urls:
                if peer.name == this_node and peer not in merged.this_node:
                    merged.this_node.append(peer)
                continue
            first = by_url.get(peer.url)
            if first is None:
                first = by_url[peer.url] = Peer(peer.url, default_peer_name(peer.url), peer.kind)
            if is_named(first) or not is_named(peer):
                continue
            if owner.setdefault(peer.name, peer.url) != peer.url:
                merged.conflicts.append(
                    f"name {peer.name!r} names both {owner[peer.name]} and {peer.url}; "
                    f"{peer.url} is named {first.name}")
                continue
            by_url[peer.url] = Peer(peer.url, peer.name, first.kind)
    merged.peers = list(by_url.values())
    return merged


def apply_kinds(peers: list[Peer], kinds: Mapping[str, PeerKind]) -> list[Peer]:
    """A peer of kind AUTO whose URL the config's `peer-kinds` names gets that kind,
    whichever source listed it."""
    return [dataclasses.replace(p, kind=kinds[p.url])
            if p.kind is PeerKind.AUTO and p.url in kinds else p for p in peers]


class PeerSet:
    """The configured peers, merged from named sources, with change notification.
    `kinds` (URL -> kind, from the config) applies to peers of every source."""

    def __init__(self, static: Iterable[Peer] = (), this_node: str | None = None,
                 kinds: Mapping[str, PeerKind] | None = None) -> None:
        self.this_node = this_node  # a source's entry of this name is this node, left out
        self.kinds = dict(kinds or {})
        self._sources: dict[str, list[Peer]] = {"static": list(static)}
        self._reported: tuple = ((), ())
        self._peers = self._merge()
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

    def peer_for(self, url: str) -> Peer:
        """The configured peer with this URL, else one named by it, of the kind the
        config's `peer-kinds` gives it (a one-off round with an unlisted peer)."""
        url = normalize_peer_url(url)
        return self.by_url(url) or apply_kinds([Peer.from_url(url)], self.kinds)[0]

    def set_source(self, source: str, peers: Iterable[Peer]) -> bool:
        """Replace one source's list; True (and consumers are woken) if the set changed."""
        self._sources[source] = list(peers)
        merged = self._merge()
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

    def _merge(self) -> list[Peer]:
        """The sources merged, with the configured kinds; what the merge left out is
        logged when it changes."""
        merged = merge_sources(self._sources.values(), self.this_node)
        reported = (tuple(merged.this_node), tuple(merged.conflicts))
        if reported != self._reported:
            self._reported = reported
            for peer in merged.this_node:
                log.info("peer %s is this node (--node-name): not a peer", peer)
            for conflict in merged.conflicts:
                log.warning("peer list: %s", conflict)
        return apply_kinds(merged.peers, self.kinds)

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
