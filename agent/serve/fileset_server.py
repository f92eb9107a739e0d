"""The HTTP side of chat batches and extras files.

/v1 (token-protected like the rest): set digests, bucket digests, entries, offers,
batch fetch, and `GET`/`PUT /v1/file/KIND/KEY/PATH`. For wubloader's backfiller,
exactly as its restreamer: chat hours and batches in `/files/CHANNEL/chat[/HOUR]`,
`GET /extras/DIR` (JSON list of paths relative to DIR), and the bytes at
`GET /segments/CHANNEL/chat/HOUR/FILE` and `/segments/DIR/PATH`. Only what the index
lists is served (no temp, hidden, symlinked or tombstoned file), and through
`SafeTree` (no symlink followed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import aclosing

import trio

from protocol.filesets import chat as ch
from protocol import endpoints as ep
from protocol.bandwidth import TransferClass
from protocol.filesets import batch as filebatch
from protocol.filesets import sets as fs
from protocol import limits
from protocol import messages as m
from protocol.errors import FileNameError, ProtocolError, SegmentNameError
from protocol.names import parse_hour, validate_component

from ..archive.filesets.index import FileSetIndex
from ..archive.filesets.ingest import FileSetIngest, FileSetMetrics, Rejected
from ..archive.filesets.tree import RefusedPath, SafeTree, entry_parts
from ..peers import fileset_client as fc
from ..peers.bandwidth import Bandwidth, requester_key
from ..peers.transport import MIN_RATE
from .asgi import HttpError, Request, send_response

log = logging.getLogger(__name__)

MSGPACK = b"application/msgpack"
JSON = b"application/json"
READ_CHUNK = 1024 * 1024
V1_ENDPOINTS = frozenset({ep.SET_DIGESTS, ep.BUCKET_DIGESTS, ep.ENTRIES, ep.FILE_OFFER,
                          ep.FILE_FETCH, ep.FILE})


def _set_of(kind: str, key: str) -> tuple[str, str]:
    try:
        return fs.check_set(kind, key)
    except FileNameError as e:
        raise HttpError(400, "bad_name", str(e)) from None


def _requester(req: Request) -> str:
    return requester_key(req.header(b"x-segsync-node"), req.scope.get("client"))


class FileSetServer:
    def __init__(self, index: FileSetIndex, ingest: FileSetIngest, tree: SafeTree,
                 metrics: FileSetMetrics, extras_dirs, request_timeout: float = 10.0,
                 bandwidth: Bandwidth | None = None) -> None:
        # the node's limits: files pushed to us are live, files served are catch-up
        self.bandwidth = bandwidth
        self.index = index
        self.ingest = ingest
        self.tree = tree
        self.metrics = metrics
        self.extras_dirs = frozenset(extras_dirs)
        self.request_timeout = request_timeout
        self.upload_slots = trio.Semaphore(16)
        self.batch_slots = trio.Semaphore(8)

    # ---- /v1 ----

    async def route_v1(self, req: Request, endpoint: str, rest: list[str], send) -> None:
        if endpoint == ep.FILE:
            if len(rest) < 3:
                raise HttpError(404, "not_found", "use /v1/file/KIND/KEY/PATH")
            kind, key = _set_of(rest[0], rest[1])
            rel = "/".join(rest[2:])
            self._check_entry(kind, key, rel)
            if req.method == "PUT":
                return await self._receive(req, kind, key, rel, send)
            if req.method != "GET":
                raise HttpError(405, "bad_method", f"{req.method} not allowed here")
            return await self.serve_file(req, kind, key, rel, send, with_hash=True)
        if rest:
            raise HttpError(404, "not_found", "no such /v1 endpoint")
        if req.method != "POST":
            raise HttpError(405, "bad_method", f"{req.method} not allowed here; use POST")
        body = await req.body(limits.MAX_REQUEST_BYTES)
        expect = {ep.SET_DIGESTS: m.SetDigestsRequest, ep.BUCKET_DIGESTS: m.BucketDigestsRequest,
                  ep.ENTRIES: m.EntriesRequest, ep.FILE_OFFER: m.FileOffer,
                  ep.FILE_FETCH: m.FileFetchRequest}[endpoint]
        try:
            msg = m.decode(body, expect, limits.MAX_REQUEST_BYTES)
        except ProtocolError as e:
            raise HttpError(400, "bad_message", str(e)) from None
        if isinstance(msg, m.FileFetchRequest):
            return await self._serve_batch(req, msg, send)
        if isinstance(msg, m.SetDigestsRequest):
            reply: m.Message = m.SetDigests(
                [list(s) for s in self.index.set_digests(msg.first_hour, msg.last_hour)])
        elif isinstance(msg, m.BucketDigestsRequest):
            reply = m.BucketDigests(msg.kind, msg.key, [list(b) for b in self.index.bucket_digests(
                msg.kind, msg.key, msg.first_hour, msg.last_hour)])
        elif isinstance(msg, m.EntriesRequest):
            entries, complete = self.index.entries(msg.kind, msg.key, msg.buckets, msg.after)
            reply = m.Entries(msg.kind, msg.key, [list(e) for e in entries], complete)
        else:
            assert isinstance(msg, m.FileOffer)
            reply = m.OfferReply(self.ingest.offer_status(msg.kind, msg.key, msg.path))
        await send_response(send, 200, m.encode(reply), MSGPACK)

    def _check_entry(self, kind: str, key: str, rel: str) -> None:
        try:
            fs.check_entry(kind, key, rel)
        except FileNameError as e:
            raise HttpError(400, "bad_name", str(e)) from None

    async def _receive(self, req: Request, kind: str, key: str, rel: str, send) -> None:
        if kind == fs.EXTRAS and key not in self.extras_dirs:
            raise HttpError(404, "not_found", f"extras directory {key!r} is not replicated here")
        size = req.content_length()
        if size is None:
            raise HttpError(411, "length_required", "Content-Length is required")
        if size > self.ingest.max_bytes:
            raise HttpError(413, "too_large", f"file larger than {self.ingest.max_bytes} bytes")
        sha = fc.decode_sha((req.header(ep.FILE_SHA256_HEADER.encode()) or b"").decode(
            "ascii", "replace"))
        if sha is None:
            raise HttpError(400, "bad_hash", f"{ep.FILE_SHA256_HEADER} is required")
        with trio.move_on_after(self.request_timeout) as waiting:
            await self.upload_slots.acquire()
        if waiting.cancelled_caught:
            raise HttpError(429, "busy", "every upload slot is busy; retry later")
        try:
            with trio.move_on_after(self.request_timeout + size / MIN_RATE) as receiving:
                try:
                    async with aclosing(self._paced(req, receiving)) as chunks:
                        status = await self.ingest.accept(kind, key, rel, size, sha, chunks,
                                                          "push")
                except Rejected as e:
                    raise HttpError(422 if e.reason == "hash_mismatch" else 400, e.reason,
                                    str(e)) from None
                except OSError as e:
                    raise HttpError(507, "storage_error", f"could not store: {e.strerror}"
                                    ) from None
        finally:
            self.upload_slots.release()
        if receiving.cancelled_caught:
            raise HttpError(408, "too_slow", "body not received in time")
        await send_response(send, 200, m.encode(m.Ack(status)), MSGPACK)

    async def _paced(self, req: Request, receiving: trio.CancelScope):
        """A pushed file's body, each chunk taken from the download limit (live); the
        wait moves the body's deadline."""
        peer = _requester(req)
        async for chunk in req.chunks():
            if self.bandwidth is not None:
                receiving.deadline += await self.bandwidth.receive_as(
                    len(chunk), TransferClass.LIVE, peer)
            yield chunk

    def _read_small(self, kind: str, key: str, rel: str) -> bytes | None:
        try:
            return self.tree.read_all(entry_parts(kind, key, rel), fs.BATCHED_FILE_BYTES)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, RefusedPath):
            return None

    def _listed(self, kind: str, key: str, rel: str) -> bool:
        if not self.index.has(kind, key, rel):
            return False
        if kind == fs.CHAT and rel.endswith(ch.BATCH_SUFFIX):
            tomb = rel[: -len(ch.BATCH_SUFFIX)] + ch.TOMBSTONE_SUFFIX
            return not self.index.has(kind, key, tomb)
        return True

    async def _serve_batch(self, req: Request, msg: m.FileFetchRequest, send) -> None:
        with trio.move_on_after(self.request_timeout) as waiting:
            await self.batch_slots.acquire()
        if waiting.cancelled_caught:
            raise HttpError(429, "busy", "every batch slot is busy; retry later")
        try:
            def build() -> bytes:
                frames = []
                total = 0
                for rel in msg.paths:
                    size = self.index.size(msg.kind, msg.key, rel)
                    data = None
                    if self._listed(msg.kind, msg.key, rel) and size is not None \
                            and size <= fs.BATCHED_FILE_BYTES \
                            and total + size <= fs.MAX_BATCH_BYTES:
                        data = self._read_small(msg.kind, msg.key, rel)
                    if data is not None and total + len(data) <= fs.MAX_BATCH_BYTES:
                        if msg.kind == fs.CHAT and not ch.matches_name(
                                ch.parse_chat_rel(msg.key, rel), data):
                            data = None  # rot: never served
                    else:
                        data = None
                    if data is None:
                        frames.append(filebatch.frame(m.FileMissing(rel, "not_found")))
                    else:
                        total += len(data)
                        frames.append(filebatch.item_frame(rel, data))
                return b"".join(frames)

            body = await trio.to_thread.run_sync(build)
        finally:
            self.batch_slots.release()
        if self.bandwidth is not None:  # a few MB at most, sent at once
            await self.bandwidth.send_as(len(body), TransferClass.CATCHUP, _requester(req))
        self.metrics.bytes.labels("served").inc(len(body))
        await send_response(send, 200, body, b"application/x-segsync-files")

    async def serve_file(self, req: Request, kind: str, key: str, rel: str, send,
                         with_hash: bool) -> None:
        if not self._listed(kind, key, rel):
            raise HttpError(404, "not_found", f"{kind} {key}/{rel}: no such file")
        try:
            f = await trio.to_thread.run_sync(self.tree.open_read, entry_parts(kind, key, rel))
        except (FileNotFoundError, NotADirectoryError, RefusedPath):
            raise HttpError(404, "not_found", f"{kind} {key}/{rel}: no such file") from None
        try:
            def measure():
                size = os.fstat(f.fileno()).st_size
                h = hashlib.sha256()
                while chunk := f.read(READ_CHUNK):
                    h.update(chunk)
                f.seek(0)
                return size, h.digest()

            size, digest = await trio.to_thread.run_sync(measure)
            if kind == fs.CHAT and digest != ch.parse_chat_rel(key, rel).hash:
                log.error("not serving %s/chat/%s: bytes do not hash to its name", key, rel)
                raise HttpError(404, "not_found", "no such file")
            ctype = b"application/json" if rel.endswith(".json") else b"application/octet-stream"
            headers = [(b"content-type", ctype), (b"content-length", str(size).encode())]
            if with_hash:
                headers.append((ep.FILE_SHA256_HEADER.encode(), fc.encode_sha(digest).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            sent, peer = 0, _requester(req)
            while sent < size:
                chunk = await trio.to_thread.run_sync(f.read, min(READ_CHUNK, size - sent))
                if not chunk:
                    return  # shrank: the response stays short, the receiver refuses it
                if self.bandwidth is not None:
                    await self.bandwidth.send_as(len(chunk), TransferClass.CATCHUP, peer)
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk,
                            "more_body": sent < size})
            if size == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.metrics.bytes.labels("served").inc(size)
        finally:
            f.close()

    # ---- wubloader's read API ----

    def wants_segments_path(self, rest: list[str]) -> bool:
        """`/segments/...` names a chat batch or an extras file (not a segment)."""
        if len(rest) == 4 and rest[1] == ch.CHAT_QUALITY:
            return True
        return bool(rest) and rest[0] in self.extras_dirs

    async def serve_legacy(self, req: Request, rest: list[str], send) -> None:
        if len(rest) == 4 and rest[1] == ch.CHAT_QUALITY:
            kind, key, rel = fs.CHAT, rest[0], f"{rest[2]}/{rest[3]}"
        else:
            kind, key, rel = fs.EXTRAS, rest[0], "/".join(rest[1:])
        try:
            fs.check_set(kind, key)
            fs.check_entry(kind, key, rel)
        except FileNameError as e:
            raise HttpError(404, "not_found", str(e)) from None
        await self.serve_file(req, kind, key, rel, send, with_hash=False)

    async def extras_listing(self, req: Request, rest: list[str], send) -> None:
        """`GET /extras/DIR`: every replicated file under DIR, relative to DIR."""
        if len(rest) != 1:
            raise HttpError(404, "not_found", "use /extras/DIR")
        if rest[0].startswith("."):
            raise HttpError(403, "bad_name", "Bad dir: May not start with a period")
        paths = (self.index.listed_rels(fs.EXTRAS, rest[0])
                 if rest[0] in self.extras_dirs else [])
        await send_response(send, 200, json.dumps(paths).encode(), JSON)

    async def chat_files(self, req: Request, parts: list[str], send) -> None:
        """`/files/CHANNEL/chat` (hours) and `/files/CHANNEL/chat/HOUR` (batches,
        plus tombstones with `tombstones=true`)."""
        try:
            channel = validate_component(parts[0], "channel")
            if len(parts) == 2:
                body = self.index.chat_hours(channel)
            else:
                parse_hour(parts[2])
                flag = req.query.get("tombstones", ["false"])
                if len(flag) != 1 or flag[0] not in ("true", "false"):
                    raise HttpError(400, "bad_query", "tombstones must be true or false")
                prefix = parts[2] + "/"
                rels = self.index.bucket_listed(fs.CHAT, channel, parts[2])
                body = [r[len(prefix):] for r in rels
                        if flag[0] == "true" or r.endswith(ch.BATCH_SUFFIX)]
        except SegmentNameError as e:
            raise HttpError(400, "bad_name", str(e)) from None
        await send_response(send, 200, json.dumps(body).encode(), JSON)
