"""Heal: fetch one segment again from the peers, through the ordinary download and
accept paths, so a healed copy is verified like every download."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from protocol.names import SegmentName

from .client import PeerClient, PeerError
from .store import WriteRejected

log = logging.getLogger(__name__)

Accept = Callable[..., Awaitable[str]]  # Node.accept_segment(name, size, chunks, source=)


class PeerHealer:
    """`await healer(name)`: True once the segment is back in the archive, from the
    first peer (in list order) that serves a copy hashing to its name."""

    def __init__(self, peer_urls: Callable[[], list[str]], make_client: Callable[[str], PeerClient],
                 accept: Accept, max_segment_bytes: int) -> None:
        self.peer_urls = peer_urls
        self.make_client = make_client
        self.accept = accept
        self.max_segment_bytes = max_segment_bytes

    async def __call__(self, name: SegmentName) -> bool:
        for url in self.peer_urls():
            client = self.make_client(url)
            try:
                async with client.download(name, self.max_segment_bytes) as (size, chunks):
                    status = await self.accept(name, size, chunks, source="heal")
            except PeerError as e:
                log.info("heal %s: %s", name.path, e)
                continue
            except WriteRejected as e:  # the peer's copy is bad too (or tombstoned here)
                log.warning("heal %s from %s refused: %s", name.path, url, e)
                if e.reason == "tombstoned":
                    return False
                continue
            except OSError as e:  # our disk: no other peer would fare better
                log.error("heal %s: storing: %s", name.path, e)
                return False
            finally:
                await client.aclose()
            if status in ("stored", "have"):
                return True
            return False  # tombstoned here since
        return False

