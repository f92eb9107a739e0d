"""Calls for chat batches and extras files: to a segsync peer (`/v1`, on its
`PeerClient`) and to a wubloader node (its restreamer's `/files`, `/extras`,
`/segments`, on its `LegacyClient`). Functions over the existing clients' transports,
so the clients themselves stay as they are."""

from __future__ import annotations

import base64
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

from protocol import endpoints as ep
from protocol.bandwidth import TransferClass
from protocol.filesets import batch as filebatch
from protocol.filesets import sets as fs
from protocol import limits
from protocol import messages as m
from protocol.filesets.chat import CHAT_QUALITY
from protocol.errors import ProtocolError

from .transport import CALL_DEADLINE_FACTOR, MIN_RATE, MovableDeadline, PeerError

# the node's bandwidth limits: pushing a new local file is live traffic (like a
# tombstone), pulling files is catch-up
LIVE, CATCHUP = TransferClass.LIVE, TransferClass.CATCHUP


def encode_sha(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def decode_sha(text: str | None) -> bytes | None:
    if not text or len(text) != 43:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=")
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


# ---- segsync peers ----

async def set_digests(client, first: str, last: str) -> m.SetDigests:
    return await client.call(ep.SET_DIGESTS, m.SetDigestsRequest(first, last), m.SetDigests)


async def bucket_digests(client, kind: str, key: str, first: str, last: str
                         ) -> m.BucketDigests:
    return await client.call(ep.BUCKET_DIGESTS,
                             m.BucketDigestsRequest(kind, key, first, last), m.BucketDigests)


async def entries(client, kind: str, key: str, buckets: list[str]
                  ) -> AsyncIterator[list[tuple[str, int]]]:
    """Every entry of these buckets, page by page."""
    after = ""
    while True:
        reply = await client.call(ep.ENTRIES, m.EntriesRequest(kind, key, buckets, after),
                                  m.Entries)
        yield reply.entries
        if reply.complete or not reply.entries:
            return
        last = reply.entries[-1][0]
        if last <= after:
            raise PeerError(client.url, "entries reply did not advance")
        after = last


async def offer(client, kind: str, key: str, rel: str, size: int) -> str:
    reply = await client.call(ep.FILE_OFFER, m.FileOffer(kind, key, rel, size),
                              m.OfferReply, limits.MAX_REQUEST_BYTES)
    return reply.status


async def upload(client, kind: str, key: str, rel: str, data: bytes, sha256: bytes) -> str:
    t = client.transport
    await client.pacing.send_as(len(data), LIVE)
    status, body = await t.exchange(
        "PUT", ep.file_url(kind, key, rel), content=data,
        max_reply=limits.MAX_REQUEST_BYTES, deadline=t.transfer_deadline(len(data)),
        headers={"content-length": str(len(data)), "content-type": "application/octet-stream",
                 ep.FILE_SHA256_HEADER: encode_sha(sha256)})
    return t.decode_reply(status, body, m.Ack, limits.MAX_REQUEST_BYTES).status


async def upload_file(client, kind: str, key: str, rel: str, f, size: int,
                      sha256: bytes) -> str:
    """Stream an open local file (large extras)."""
    t = client.transport
    moved = MovableDeadline()

    async def body():
        left = size
        while left > 0:
            chunk = await trio.to_thread.run_sync(f.read, min(1024 * 1024, left))
            if not chunk:
                raise PeerError(client.url, f"{rel} shrank while sending")
            left -= len(chunk)
            moved.move(await client.pacing.send_as(len(chunk), LIVE))
            yield chunk

    status, data = await t.exchange(
        "PUT", ep.file_url(kind, key, rel), content=body(),
        max_reply=limits.MAX_REQUEST_BYTES, deadline=t.transfer_deadline(size),
        headers={"content-length": str(size), "content-type": "application/octet-stream",
                 ep.FILE_SHA256_HEADER: encode_sha(sha256)}, moved=moved)
    return t.decode_reply(status, data, m.Ack, limits.MAX_REQUEST_BYTES).status


async def fetch_batch(client, kind: str, key: str, rels: list[str]
                      ) -> list[filebatch.BatchItem]:
    """Many small files in one exchange (POST /v1/file-fetch)."""
    t = client.transport
    max_reply = fs.MAX_BATCH_BYTES + len(rels) * limits.MAX_FRAME_HEADER + 4096
    status, data = await t.exchange(
        "POST", ep.FILE_FETCH, content=m.encode(m.FileFetchRequest(kind, key, rels)),
        max_reply=max_reply, deadline=t.transfer_deadline(max_reply),
        headers={"content-type": "application/msgpack"})
    if status != 200:
        raise PeerError(client.url, t.error_text(status, data), status)
    await client.pacing.receive_as(len(data), CATCHUP)  # a few MB at most, read at once
    try:
        return filebatch.parse_batch(data, rels, max_reply)
    except ProtocolError as e:
        raise PeerError(client.url, f"bad file batch: {e}") from None


@asynccontextmanager
async def download(client, url_path: str, what: str, max_bytes: int):
    """GET one file: yields (declared size or None, sha256 header or None, chunks).
    A 404 is a PeerError with status 404."""
    t = client.transport
    async with t.stream("GET", url_path) as response:
        declared = response.headers.get("content-length")
        size = int(declared) if declared and declared.isdigit() else None
        if size is not None and size > max_bytes:
            raise PeerError(t.url, f"{what}: {size} bytes is over the limit")
        sha = decode_sha(response.headers.get(ep.FILE_SHA256_HEADER))
        deadline = trio.current_time() + t.transfer_deadline(
            size if size is not None else max_bytes)

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal deadline
            got = 0
            with t.errors():
                async for chunk in response.aiter_raw():
                    got += len(chunk)
                    if got > max_bytes:
                        raise PeerError(t.url, f"{what}: more than {max_bytes} bytes")
                    if trio.current_time() > deadline:
                        raise PeerError(t.url, f"{what}: sent slower than {MIN_RATE} bytes/s")
                    deadline += await client.pacing.receive_as(len(chunk), CATCHUP)
                    yield chunk

        yield size, sha, chunks()


# ---- wubloader nodes ----

async def legacy_has_chat(client, channel: str) -> bool:
    return CHAT_QUALITY in await client.qualities(channel)


async def legacy_extras(client, directory: str) -> list[str]:
    t = client.transport
    path = ep.extras_url(directory)
    status, data = await t.exchange("GET", path, max_reply=fs.MAX_LEGACY_EXTRAS_BYTES,
                                    deadline=client.timeout * CALL_DEADLINE_FACTOR * 4)
    if status != 200:
        raise PeerError(client.url, f"GET {path}: HTTP {status}", status)
    try:
        return fs.decode_legacy_extras(data)
    except ProtocolError as e:
        raise PeerError(client.url, f"GET {path}: {e}") from None
