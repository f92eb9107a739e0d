"""What a peer is: a segsync agent or a wubloader node, configured or found by a probe.

Pure decisions (the probe's verdict, when to probe again, reading the config value);
the probe itself is `agent.peers.kinds`.
"""

from __future__ import annotations

import enum

from . import limits
from . import messages as m
from .errors import ProtocolError


class PeerKind(str, enum.Enum):
    SEGSYNC = "segsync"  # speaks /v1: push and pull
    WUBLOADER = "wubloader"  # serves only wubloader's read API (/files, /segments): pull only
    AUTO = "auto"  # not configured: found by a probe, remembered


# what the config accepts; "legacy" is the name the first releases documented
KIND_NAMES = {"auto": PeerKind.AUTO, "segsync": PeerKind.SEGSYNC,
              "wubloader": PeerKind.WUBLOADER, "legacy": PeerKind.WUBLOADER}


def parse_peer_kind(value: object) -> PeerKind:
    """A configured kind; ValueError naming the accepted values."""
    kind = KIND_NAMES.get(value) if isinstance(value, str) else None
    if kind is None:
        raise ValueError(f"{value!r} is not a peer kind ({', '.join(KIND_NAMES)})")
    return kind


def is_segsync_reply(data: bytes) -> bool:
    """A segsync agent answers `/v1` with a protocol message: a reply or an error."""
    for expect in (m.PairDigests, m.Error):
        try:
            m.decode(data, expect, limits.MAX_REPLY_BYTES)
            return True
        except ProtocolError:
            continue
    return False


def classify_probe(v1_status: int | None, v1_is_segsync: bool,
                   files_status: int | None, files_is_list: bool) -> PeerKind | None:
    """What a probe found: SEGSYNC if /v1 answered like segsync (any status with a
    segsync body: a 401 is a segsync peer with another token), WUBLOADER if /v1 is
    absent (404/405) and `GET /files` is a JSON list, None if it cannot tell yet
    (down, 5xx, something else entirely)."""
    if v1_status is not None and v1_is_segsync:
        return PeerKind.SEGSYNC
    if v1_status in (404, 405) and files_status == 200 and files_is_list:
        return PeerKind.WUBLOADER
    return None


def needs_probe(configured: PeerKind, known: PeerKind | None, probed_at: float | None,
                now: float, reprobe_after: float) -> bool:
    """Probe a peer of kind AUTO when its kind is unknown, or when it was found a
    wubloader node `reprobe_after` seconds ago (it may have moved to segsync since).
    A segsync peer is probed again only once its /v1 goes missing (it is forgotten)."""
    if configured is not PeerKind.AUTO:
        return False
    if known is None or probed_at is None:
        return True
    return known is PeerKind.WUBLOADER and now - probed_at >= reprobe_after
