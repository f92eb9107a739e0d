"""`--peers-file`: a source of the peer set, re-read when the file changes.

The file is segsync's list (one URL per line) or wubloader's node file (`NAME URL` or
`URL` per line; see `protocol.peerlist`); a name names the peer in status and metrics,
and the line named like this node is left out by the peer set. If the file becomes
unreadable or invalid, or names a peer the node's `rule` refuses (the clear-text rule,
agent/peers/tls.py), the peer set keeps the last good list, and the reason is logged,
counted and shown in the status reply."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import trio

from protocol import messages as m
from protocol.errors import ConfigError
from protocol.peerlist import PeerEntry, PeerListError, SourceHealth, parse_node_file

from ..telemetry.metrics import Metrics
from .peer_set import Peer, PeerSet, normalize_peer_url
from .tls import file_signature

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between looks at the file's size, time and inode
SOURCE = "file"


class PeersFile:
    def __init__(self, path: Path, peers: PeerSet, metrics: Metrics,
                 clock: Callable[[], float] = time.time,
                 rule: Callable[[list[PeerEntry]], str | None] = lambda entries: None
                 ) -> None:
        self.path = path
        self.peers = peers
        self.metrics = metrics
        self.clock = clock
        self.rule = rule  # what is wrong with a list of peers, or None
        self.last_good: list[Peer] | None = None
        self.health = SourceHealth()

    def read(self) -> list[Peer] | ConfigError:
        """The file's peers, or why it cannot be used (blocking: run it in a thread)."""
        try:
            entries = read_peers_file(self.path)
            problem = self.rule(entries)
            if problem:
                raise ConfigError(f"peers file {self.path}: {problem}")
            return [Peer.from_url(e.url, e.name) for e in entries]
        except ConfigError as e:
            return e

    def apply(self, peers: list[Peer] | ConfigError) -> bool:
        """Put what `read` found into the peer set (in the trio thread); False if bad."""
        if isinstance(peers, ConfigError):
            self.metrics.peer_source_failures.labels(SOURCE).inc()
            self.health.failed(str(peers), self.clock())
            log.error("%s; keeping the last good peer list", peers)
            return False
        self.health.succeeded(self.clock())
        if peers != self.last_good:
            log.info("peers file: %s", ", ".join(map(str, peers)) or "no peers")
            self.last_good = peers
            self.peers.set_source(SOURCE, peers)
        return True

    def status(self) -> m.PeerSourceStatus:
        """The file's state for the status reply."""
        return self.health.report(SOURCE, str(self.path), len(self.last_good or ()))

    async def watch(self) -> None:
        """Re-read the file whenever its size, time or inode change."""
        last = await trio.to_thread.run_sync(file_signature, self.path)
        while True:
            await trio.sleep(POLL_INTERVAL)
            sig = await trio.to_thread.run_sync(file_signature, self.path)
            if sig != last:
                last = sig
                self.apply(await trio.to_thread.run_sync(self.read))


def read_peers_file(path: Path) -> list[PeerEntry]:
    """A node file: `NAME URL` or `URL` per line (see `protocol.peerlist`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"peers file {path}: {e}") from None
    try:
        return parse_node_file(text, normalize_peer_url)
    except PeerListError as e:
        raise ConfigError(f"peers file {path}: {e}") from None
