"""HTTP client of a wubloader node: its restreamer's read-only `/files` and `/segments`.

Made by `ClientFactory.wubloader_client`, on the same `Transport` as a segsync client
(semaphore gate, whole-exchange deadlines, bounded reads, one error translation),
without the token. Listings are JSON lists (wubloader sends them as text/html),
decoded by `protocol.legacy.decode_name_list`.
"""

from __future__ import annotations

from protocol import endpoints as ep
from protocol import legacy
from protocol import messages as m
from protocol.errors import ProtocolError
from protocol.names import SegmentName

from .transport import CALL_DEADLINE_FACTOR, PeerError
from .transport_client import TransportClient


class LegacyClient(TransportClient):
    """Typed calls to one wubloader node. Make it with `ClientFactory.wubloader_client`."""

    async def get(self, path: str) -> tuple[int, bytes]:
        """One GET within the call deadline, its reply read up to the listing limit."""
        return await self.transport.exchange(
            "GET", path, max_reply=legacy.MAX_LIST_BYTES,
            deadline=self.timeout * CALL_DEADLINE_FACTOR)

    async def names(self, path: str) -> list[str]:
        """A listing; a non-200 or anything but a JSON list of strings is a PeerError."""
        status, data = await self.get(path)
        if status != 200:
            raise PeerError(self.url, f"GET {path}: HTTP {status}", status)
        try:
            return legacy.decode_name_list(data)
        except ProtocolError as e:
            raise PeerError(self.url, f"GET {path}: {e}") from None

    async def ping(self) -> None:
        """A wubloader node has no /healthz: its channel list stands in."""
        await self.channels()

    async def channels(self) -> list[str]:
        return await self.names(ep.files_url())

    async def qualities(self, channel: str) -> list[str]:
        return await self.names(ep.files_url(channel))

    async def hours(self, channel: str, quality: str) -> list[str]:
        return await self.names(ep.files_url(channel, quality))

    async def hour_listing(self, channel: str, quality: str, hour: str) -> list[str]:
        """Segment names and tombstone names of one hour (a tombstoned segment is
        never listed: wubloader's list_segment_files)."""
        return await self.names(ep.files_url(channel, quality, hour) + "?tombstones=true")

    async def listing(self, channel: str, quality: str, hour: str) -> m.Listing:
        """The hour's listing in segsync's shape (what `segsync purge` asks every peer)."""
        return m.Listing(channel, quality, hour, await self.hour_listing(channel, quality, hour))

    def segment_path(self, name: SegmentName) -> str:
        return ep.legacy_segment_url(name.path)
