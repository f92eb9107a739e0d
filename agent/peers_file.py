"""`--peers-file`: a source of the peer set, re-read when the file changes.

If the file becomes unreadable or invalid, the peer set keeps the last good list and
the reason is logged."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from .config import ConfigError, read_peers_file
from .peers import Peer, PeerSet

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between looks at the file's size, time and inode
SOURCE = "file"


class PeersFile:
    def __init__(self, path: Path, peers: PeerSet) -> None:
        self.path = path
        self.peers = peers
        self.last_good: list[Peer] | None = None

    def read(self) -> list[Peer] | None:
        """The file's peers; None (logged) if it is unreadable or invalid."""
        try:
            return [Peer.from_url(url) for url in read_peers_file(self.path)]
        except ConfigError as e:
            log.error("%s; keeping the last good peer list", e)
            return None

    def apply(self, peers: list[Peer] | None) -> bool:
        """Put what `read` found into the peer set (in the trio thread); False if bad."""
        if peers is None:
            return False
        if peers != self.last_good:
            log.info("peers file: %s", ", ".join(p.url for p in peers) or "no peers")
            self.last_good = peers
            self.peers.set_source(SOURCE, peers)
        return True

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    async def watch(self) -> None:
        """Re-read the file whenever its size, time or inode change."""
        last = await trio.to_thread.run_sync(self._signature)
        while True:
            await trio.sleep(POLL_INTERVAL)
            sig = await trio.to_thread.run_sync(self._signature)
            if sig != last:
                last = sig
                self.apply(await trio.to_thread.run_sync(self.read))
