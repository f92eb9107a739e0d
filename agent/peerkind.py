"""Which peers are segsync agents and which are legacy wubloader nodes.

A peer's kind comes from the config (`peer-kinds`), else from a probe, remembered.
One probe at a time per peer (backfill rounds and push workers share it). A legacy
peer is probed again every `reprobe_after` seconds: its node may have moved to
segsync meanwhile. A segsync peer whose `/v1` goes missing is forgotten (`forget`)
and probed again when next needed.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from protocol.legacy import AUTO, LEGACY, PEER_KINDS, needs_probe

from .client import PeerError, normalize_peer_url

log = logging.getLogger(__name__)

REPROBE_AFTER = 600.0  # seconds

Prober = Callable[[str], Awaitable[tuple[str | None, str]]]


def parse_peer_kinds(value: object) -> dict[str, str]:
    """The `peer-kinds` config table: peer URL -> auto | segsync | legacy."""
    if not isinstance(value, dict):
        raise ValueError("peer-kinds must be a table of URL = \"auto|segsync|legacy\"")
    out = {}
    for url, kind in value.items():
        if kind not in PEER_KINDS:
            raise ValueError(f"peer-kinds: {url!r} must be one of {', '.join(PEER_KINDS)}")
        out[normalize_peer_url(str(url))] = kind
    return out


class PeerKinds:
    def __init__(self, overrides: dict[str, str], probe: Prober,
                 reprobe_after: float = REPROBE_AFTER) -> None:
        self.overrides = overrides
        self.probe = probe
        self.reprobe_after = reprobe_after
        self._known: dict[str, tuple[str, float]] = {}  # url -> (kind, trio time probed)
        self._probing: dict[str, trio.Event] = {}
        self.last_error: dict[str, str] = {}

    def known(self, url: str) -> str | None:
        """The kind if set or found already, else None; never waits."""
        override = self.overrides.get(url, AUTO)
        if override != AUTO:
            return override
        entry = self._known.get(url)
        return entry[0] if entry else None

    def forget(self, url: str) -> None:
        if self._known.pop(url, None) is not None:
            log.info("peer %s: kind forgotten, probing it again", url)

    async def kind(self, url: str) -> str:
        """The peer's kind, probing it if needed; PeerError if it cannot be told now."""
        while True:
            override = self.overrides.get(url, AUTO)
            entry = self._known.get(url)
            if not needs_probe(override, entry[0] if entry else None,
                               entry[1] if entry else None, trio.current_time(),
                               self.reprobe_after):
                kind = self.known(url)
                assert kind is not None
                return kind
            running = self._probing.get(url)
            if running is None:
                break
            await running.wait()
            if self._known.get(url) is entry:  # that probe could not tell either
                raise PeerError(url, f"cannot tell its kind: {self.last_error.get(url)}")
        done = self._probing[url] = trio.Event()
        try:
            kind, seen = await self.probe(url)
        finally:
            del self._probing[url]
            done.set()
        if kind is None:
            self.last_error[url] = seen
            if entry is not None:  # a re-probe that failed: keep what we knew
                return entry[0]
            raise PeerError(url, f"cannot tell its kind: {seen}")
        if entry is None or entry[0] != kind:
            log.info("peer %s is a %s peer (%s)", url, kind, seen)
        self._known[url] = (kind, trio.current_time())
        self.last_error.pop(url, None)
        return kind

    def is_legacy(self, url: str) -> bool:
        return self.known(url) == LEGACY
