"""HTTP client for a legacy peer: wubloader's read-only `/files` and `/segments` API.

Built on `PeerClient` (same semaphore gate, deadlines, bounded reads and streamed,
rate-checked downloads), minus everything `/v1`. Listings are JSON lists (wubloader
sends them as text/html), decoded by `protocol.legacy.decode_name_list`.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx

from protocol import legacy, limits
from protocol import messages as m
from protocol.errors import ProtocolError

from .client import CALL_DEADLINE_FACTOR, PeerClient, PeerError


class LegacyClient(PeerClient):
    segment_prefix = "/segments/"

    def __init__(self, url: str, concurrency: int = 8, connect_timeout: float = 2.0,
                 timeout: float = 10.0) -> None:
        # no token: a wubloader node has no use for the cluster's secret
        super().__init__(url, None, "", concurrency, connect_timeout, timeout)
        self.batch_fetch = False  # one GET per segment: wubloader has no batch fetch

    async def _get(self, path: str, params: dict | None = None) -> tuple[int, bytes]:
        """One GET within the call deadline, its reply read up to the listing limit."""
        async with self.gate:
            with self._deadline(self.timeout * CALL_DEADLINE_FACTOR, path):
                try:
                    async with self.http.stream("GET", path, params=params) as response:
                        data = await self._read_limited(response, legacy.MAX_LIST_BYTES)
                except httpx.HTTPError as e:
                    raise PeerError(self.url, f"{type(e).__name__}: {e}") from None
        return response.status_code, data

    async def names(self, path: str, params: dict | None = None) -> list[str]:
        """A listing; a non-200 or anything but a JSON list of strings is a PeerError."""
        status, data = await self._get(path, params)
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
        return await self.names("/files")

    async def qualities(self, channel: str) -> list[str]:
        return await self.names(f"/files/{quote(channel)}")

    async def hours(self, channel: str, quality: str) -> list[str]:
        return await self.names(f"/files/{quote(channel)}/{quote(quality)}")

    async def hour_listing(self, channel: str, quality: str, hour: str) -> list[str]:
        """Segment names and tombstone names of one hour (a tombstoned segment is
        never listed: wubloader's list_segment_files)."""
        return await self.names(f"/files/{quote(channel)}/{quote(quality)}/{hour}",
                                {"tombstones": "true"})

    async def listing(self, channel: str, quality: str, hour: str) -> m.Listing:
        """The hour's listing in segsync's shape (what `segsync purge` asks every peer)."""
        return m.Listing(channel, quality, hour, await self.hour_listing(channel, quality, hour))


async def probe_kind(url: str, token: str | None, timeout: float,
                     hour: str) -> tuple[str | None, str]:
    """Ask the peer what it is: a segsync agent (`/v1` answers like segsync, even
    refusing our token), a legacy wubloader node (no `/v1`, `/files` is a JSON list),
    or None (cannot tell now: down, failing). Returns (kind, what was seen).

    The `/v1` question is a pair-digests request over one `hour` only: cheap for a
    segsync peer."""
    v1 = PeerClient(url, token, concurrency=1, timeout=timeout)
    v1_status: int | None = None
    v1_is_segsync = False
    seen = []
    try:
        body = m.encode(m.PairDigestsRequest(hour, hour))
        async with v1.gate:
            with v1._deadline(timeout, "probe /v1"):
                try:
                    async with v1.http.stream("POST", "/v1/pair-digests", content=body, headers={
                            "content-type": "application/msgpack"}) as response:
                        data = await v1._read_limited(response, limits.MAX_REPLY_BYTES)
                    v1_status = response.status_code
                    v1_is_segsync = legacy.is_segsync_reply(data)
                    seen.append(f"/v1: HTTP {v1_status}")
                except httpx.HTTPError as e:
                    seen.append(f"/v1: {type(e).__name__}: {e}")
    except PeerError as e:
        seen.append(str(e).removeprefix(f"{v1.url}: "))
    finally:
        await v1.aclose()
    files_status: int | None = None
    files_is_list = False
    if v1_status in (404, 405) and not v1_is_segsync:
        client = LegacyClient(url, concurrency=1, timeout=timeout)
        try:
            files_status, data = await client._get("/files")
            try:
                legacy.decode_name_list(data)
                files_is_list = True
            except ProtocolError as e:
                seen.append(f"/files: {e}")
            seen.append(f"/files: HTTP {files_status}")
        except PeerError as e:
            seen.append(str(e).removeprefix(f"{client.url}: "))
        finally:
            await client.aclose()
    kind = legacy.classify_probe(v1_status, v1_is_segsync, files_status, files_is_list)
    return kind, "; ".join(seen)
