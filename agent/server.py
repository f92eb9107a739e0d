"""The HTTP face of a node: one ASGI app served by hypercorn's trio worker.

/v1/...    msgpack endpoints between agents (token-protected when a token is set)
/files/... /segments/...   read-only JSON/bytes endpoints of existing archive tooling
/healthz, /metrics

Every input is validated before anything touches the disk; any refusal is a 4xx
with a clear body and changes nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import urllib.parse
from typing import TYPE_CHECKING, Any, AsyncIterator

import trio

from protocol import limits
from protocol import messages as m
from protocol.errors import ProtocolError, SegmentNameError
from protocol.fetchstream import frame_header
from protocol.names import Kind, SegmentName, parse_hour, parse_path, validate_component
from protocol.recording import LATER_HEADER, LATER_HEADER_VALUE

from .client import MIN_RATE
from .store import WriteRejected

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

MSGPACK = b"application/msgpack"
FETCH_STREAM = b"application/x-segsync-fetch"
UPLOAD_BUFFER = 1024 * 1024  # bytes read per thread hop when serving a segment
BATCH_SERVES = 16  # batch fetches answered at once (each holds up to 64 open files)


ENDPOINTS = frozenset({
    "v1-segments", "v1-fetch", "v1-offer", "v1-tombstone", "v1-pair-digests",
    "v1-hour-digests", "v1-listing", "v1-status", "files", "segments", "metrics", "healthz",
})


def endpoint_label(path: str) -> str:
    """The endpoint a request path names, from a fixed set (bounded metric labels)."""
    parts = path.split("/")[1:]
    label = "-".join(parts[:2]) if parts[:1] == ["v1"] else (parts[0] if parts else "")
    return label if label in ENDPOINTS else "other"


def _close_all(opened: list) -> None:
    for o in opened:
        if o is not None:
            o[0].close()


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ClientGone(Exception):
    """The peer disconnected before sending the whole body."""


def split_raw_path(raw: bytes) -> list[str]:
    """Split the undecoded path on '/', then decode each part: '%2f' cannot add a level."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "bad_path", "path is not ASCII") from None
    parts = text.split("/")
    if parts[0] != "":
        raise HttpError(400, "bad_path", "path must start with '/'")
    out = []
    for part in parts[1:]:
        try:
            out.append(urllib.parse.unquote(part, errors="strict"))
        except UnicodeDecodeError:
            raise HttpError(400, "bad_path", "path is not valid UTF-8") from None
    return out


class Request:
    __slots__ = ("scope", "receive", "method", "parts", "query", "headers")

    def __init__(self, scope: dict, receive) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        raw = raw.split(b"?", 1)[0]
        self.parts = split_raw_path(raw)
        try:
            self.query = urllib.parse.parse_qs(
                scope.get("query_string", b"").decode("ascii"), keep_blank_values=True,
                strict_parsing=False, max_num_fields=16,
            )
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "bad_query", "query string is malformed") from None
        self.headers = {k.lower(): v for k, v in scope.get("headers", [])}

    def header(self, name: bytes) -> bytes | None:
        return self.headers.get(name)

    async def body(self, limit: int) -> bytes:
        """The whole body, refusing more than `limit` bytes."""
        declared = self.content_length()
        if declared is not None and declared > limit:
            raise HttpError(413, "too_large", f"body larger than {limit} bytes")
        buf = bytearray()
        async for chunk in self.chunks():
            buf += chunk
            if len(buf) > limit:
                raise HttpError(413, "too_large", f"body larger than {limit} bytes")
        return bytes(buf)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def wait_disconnect(self) -> None:
        """Return when the client has gone (what is left of the request body is
        skipped); an answer still being streamed then reaches nobody."""
        while (await self.receive())["type"] != "http.disconnect":
            pass

    def content_length(self) -> int | None:
        raw = self.header(b"content-length")
        if raw is None:
            return None
        if not raw.isdigit() or len(raw) > 15:
            raise HttpError(400, "bad_length", "Content-Length is not a number")
        return int(raw)


async def send_response(
    send, status: int, body: bytes, content_type: bytes, extra: list | None = None
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


def segment_from_path(path: str, not_segment: str) -> SegmentName:
    """A URL's segment path, validated: 400 bad_name for anything else."""
    try:
        name, kind = parse_path(path)
    except SegmentNameError as e:
        raise HttpError(400, "bad_name", str(e)) from None
    if kind is not Kind.SEGMENT:
        raise HttpError(400, "bad_name", not_segment)
    return name


def json_body(value: Any) -> bytes:
    return json.dumps(value).encode()


class App:
    """ASGI application of one node."""

    def __init__(self, node: "Node") -> None:
        self.node = node
        self.upload_slots = trio.Semaphore(32)
        self.batch_slots = trio.Semaphore(BATCH_SERVES)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            # hypercorn-trio needs the lifespan protocol answered, not a bare return
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        v1 = scope.get("path", "").startswith("/v1/")
        self.node.metrics.requests.labels(endpoint_label(scope.get("path", ""))).inc()
        send = self._tolerant_send(scope, send)
        try:
            request = Request(scope, receive)
            await self.route(request, send)
        except HttpError as e:
            self.node.metrics.rejected.labels(e.code).inc()
            if e.status >= 500:
                log.error("%s %s: %s", scope.get("method"), scope.get("path"), e.message)
            else:
                log.info("refused %s %s: %s", scope.get("method"), scope.get("path"), e.message)
            if v1:
                await send_response(send, e.status, m.encode(m.Error(e.code, e.message)), MSGPACK)
            else:
                await send_response(
                    send, e.status, json_body({"error": e.message, "code": e.code}),
                    b"application/json",
                )
        except ClientGone:
            self.node.metrics.rejected.labels("client_gone").inc()
            log.info("%s %s: peer disconnected mid-request", scope.get("method"), scope.get("path"))

    def _tolerant_send(self, scope, send):
        """hypercorn may shut the socket while we answer (the client sent bytes after
        `connection: close`, or left): then nobody reads the answer, and trio's refusal
        of the send must not become an application error."""
        gone = False

        async def tolerant(message) -> None:
            nonlocal gone
            if gone:
                return
            try:
                await send(message)
            except (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError):
                gone = True
                self.node.metrics.rejected.labels("client_gone").inc()
                log.info("%s %s: connection closed while answering", scope.get("method"),
                         scope.get("path"))

        return tolerant

    # ---- routing ----

    async def route(self, req: Request, send) -> None:
        parts = req.parts
        head = parts[0] if parts else ""
        if head == "healthz" and len(parts) == 1:
            self._method(req, "GET")
            return await send_response(send, 200, b"ok\n", b"text/plain")
        if head == "metrics" and len(parts) == 1:
            self._method(req, "GET")
            self._check_read_auth(req)
            return await send_response(
                send, 200, self.node.metrics.render(), b"text/plain; version=0.0.4"
            )
        if head == "v1":
            self._check_token(req)
            return await self.route_v1(req, parts[1:], send)
        if head == "files":
            self._method(req, "GET")
            self._check_read_auth(req)
            return await self.compat_files(req, parts[1:], send)
        if head == "segments":
            self._method(req, "GET")
            self._check_read_auth(req)
            return await self.serve_segment(req, "/".join(parts[1:]), send)
        raise HttpError(404, "not_found", "no such endpoint")

    async def route_v1(self, req: Request, parts: list[str], send) -> None:
        op = parts[0] if parts else ""
        if op == "segments" and len(parts) >= 2:
            path = "/".join(parts[1:])
            if req.method == "PUT":
                return await self.receive_segment(req, path, send)
            self._method(req, "GET")
            return await self.serve_segment(req, path, send)
        if op == "fetch" and len(parts) == 1:
            self._method(req, "POST")
            return await self.serve_batch(req, send)
        handlers = {
            "offer": (m.Offer, lambda offer: self.on_offer(offer, req)),
            "tombstone": (m.Tombstone, self.on_tombstone),
            "pair-digests": (m.PairDigestsRequest, self.on_pair_digests),
            "hour-digests": (m.HourDigestsRequest, self.on_hour_digests),
            "listing": (m.ListingRequest, self.on_listing),
            "status": (m.StatusRequest, self.on_status),
        }
        if len(parts) != 1 or op not in handlers:
            raise HttpError(404, "not_found", "no such /v1 endpoint")
        self._method(req, "POST")
        cls, handler = handlers[op]
        body = await req.body(limits.MAX_REQUEST_BYTES)
        try:
            message = m.decode(body, cls, limits.MAX_REQUEST_BYTES)
        except ProtocolError as e:
            raise HttpError(400, "bad_message", str(e)) from None
        try:
            reply = await handler(message)
        except OSError as e:  # e.g. no room for a tombstone
            raise HttpError(507, "storage_error", f"could not store: {e.strerror}") from None
        await send_response(send, 200, m.encode(reply) if isinstance(reply, m.Message)
                            else reply, MSGPACK)

    def _method(self, req: Request, allowed: str) -> None:
        if req.method != allowed:
            raise HttpError(405, "bad_method", f"{req.method} not allowed here; use {allowed}")

    def _check_token(self, req: Request) -> None:
        token = self.node.config.token
        if token is None:
            return
        expected = b"Bearer " + token.encode()
        got = req.header(b"authorization") or b""
        if not hmac.compare_digest(got, expected):
            raise HttpError(401, "unauthorized", "missing or wrong bearer token")

    def _check_read_auth(self, req: Request) -> None:
        if self.node.config.protect_reads:
            self._check_token(req)

    # ---- /v1 handlers ----

    async def on_offer(self, offer: m.Offer, req: Request) -> m.OfferReply:
        accepts_later = req.header(LATER_HEADER.encode()) == LATER_HEADER_VALUE.encode()
        return self.node.downloader.offer_reply(offer.segment, accepts_later)

    async def on_tombstone(self, msg: m.Tombstone) -> m.Ack:
        status = await self.node.accept_tombstone(msg.segment, source="push")
        return m.Ack(status)

    async def on_pair_digests(self, req: m.PairDigestsRequest) -> m.PairDigests:
        pairs = self.node.index.pair_digests(req.first_hour, req.last_hour)
        return m.PairDigests(req.first_hour, req.last_hour, pairs)

    async def on_hour_digests(self, req: m.HourDigestsRequest) -> m.HourDigests:
        hours = self.node.index.hour_digests(req.channel, req.quality, req.first_hour, req.last_hour)
        return m.HourDigests(req.channel, req.quality, hours)

    async def on_listing(self, req: m.ListingRequest) -> m.Listing:
        names = self.node.index.replicable(req.channel, req.quality, req.hour)
        return m.Listing(req.channel, req.quality, req.hour, names)

    async def on_status(self, req: m.StatusRequest) -> bytes:
        import msgpack

        probes = await self.node.probe_peers()
        return msgpack.packb({"v": limits.PROTOCOL_VERSION, "type": "status",
                              **self.node.status(probes)}, use_bin_type=True)

    async def receive_segment(self, req: Request, path: str, send) -> None:
        name = segment_from_path(path, "PUT takes a .ts segment path")
        size = req.content_length()
        if size is None:
            raise HttpError(411, "length_required", "Content-Length is required")
        if size > self.node.config.max_segment_bytes:
            raise HttpError(413, "too_large", f"segment larger than "
                            f"{self.node.config.max_segment_bytes} bytes")
        # a sender that drips its body must not hold a slot for ever: bounded wait for a
        # slot, then the body must arrive at MIN_RATE (as the client demands of peers)
        timeout = self.node.config.request_timeout
        with trio.move_on_after(timeout) as waiting:
            await self.upload_slots.acquire()
        if waiting.cancelled_caught:
            raise HttpError(429, "busy", "every upload slot is busy; retry later")
        try:
            with trio.move_on_after(timeout + size / MIN_RATE) as receiving:
                try:
                    status = await self.node.accept_segment(name, size, req.chunks(),
                                                            source="push")
                except WriteRejected as e:
                    if e.reason == "tombstoned":
                        status = "tombstoned"
                    else:
                        code = 422 if e.reason in ("hash_mismatch", "temp") else 400
                        raise HttpError(code, e.reason, str(e)) from None
                except OSError as e:
                    raise HttpError(507, "storage_error",
                                    f"could not store {path}: {e.strerror}") from None
        finally:
            self.upload_slots.release()
        if receiving.cancelled_caught:
            raise HttpError(408, "too_slow", f"{path}: body not received at "
                            f"{MIN_RATE} bytes/s or more")
        await send_response(send, 200, m.encode(m.Ack(status)), MSGPACK)

    def _open_for_serving(self, name: SegmentName):
        """(open file, size), or None when the segment is not served (absent,
        tombstoned). An open file keeps its bytes even if the name goes away."""
        try:
            f = self.node.store.open_segment(name)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return f, os.fstat(f.fileno()).st_size
        except BaseException:
            f.close()
            raise

    def _open_batch(self, names: list[SegmentName]) -> list:
        opened = []
        try:
            for name in names:
                opened.append(self._open_for_serving(name))
        except BaseException:
            _close_all(opened)
            raise
        return opened

    async def _send_file(self, f, size: int, send, last: bool) -> bool:
        """Stream an open segment as body messages; False if the file came up short
        (cut under us): then nothing more may be sent, and returning leaves the
        response unfinished, so hypercorn closes the connection and the receiver
        rejects what it got instead of storing it."""
        sent = 0
        while sent < size:
            chunk = await trio.to_thread.run_sync(f.read, min(UPLOAD_BUFFER, size - sent))
            if not chunk:
                log.warning("%s shrank while being served", f.name)
                return False
            sent += len(chunk)
            self.node.metrics.bytes.labels("served").inc(len(chunk))
            await send({"type": "http.response.body", "body": chunk,
                        "more_body": sent < size or not last})
        return True

    async def serve_segment(self, req: Request, path: str, send) -> None:
        name = segment_from_path(path, "only .ts segments are served")
        opened = await trio.to_thread.run_sync(self._open_for_serving, name)
        if opened is None:
            raise HttpError(404, "not_found", f"{path}: no such segment, or tombstoned")
        f, size = opened

        async def answer(send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"video/mp2t"), (b"content-length", str(size).encode())]})
            if size == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            await self._send_file(f, size, send, last=True)

        try:
            await self._answer_unless_gone(req, send, answer)
        finally:
            f.close()

    async def serve_batch(self, req: Request, send) -> None:
        """POST /v1/fetch: many segments in one response, framed (protocol.fetchstream).
        Every file is opened (and sized) before the answer starts, so the response has
        a Content-Length and the bytes of each are the ones that were there then."""
        body = await req.body(limits.MAX_REQUEST_BYTES)
        try:
            request = m.decode(body, m.FetchRequest, limits.MAX_REQUEST_BYTES)
        except ProtocolError as e:
            raise HttpError(400, "bad_message", str(e)) from None
        names = [parse_path(path)[0] for path in request.paths]
        # each batch holds up to MAX_FETCH_PATHS open files: a bounded number at a time
        with trio.move_on_after(self.node.config.request_timeout) as waiting:
            await self.batch_slots.acquire()
        if waiting.cancelled_caught:
            raise HttpError(429, "busy", "every batch fetch slot is busy; retry later")
        try:
            await self._answer_unless_gone(
                req, send, lambda send: self._serve_batch(names, send))
        finally:
            self.batch_slots.release()

    async def _answer_unless_gone(self, req: Request, send, answer) -> None:
        """Run `answer(send)`, which streams a response, but stop as soon as the client
        disconnects: hypercorn then drops what we send, and we would go on reading
        files for nobody. (hypercorn also reports a disconnect once the last body
        message went out; that one is no reason to stop.)"""
        gone = finishing = False

        async def tracking_send(message) -> None:
            nonlocal finishing
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finishing = True
            await send(message)

        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                nonlocal gone
                await req.wait_disconnect()
                if not finishing:
                    gone = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await answer(tracking_send)
            nursery.cancel_scope.cancel()
        if gone:
            raise ClientGone()

    async def _serve_batch(self, names: list[SegmentName], send) -> None:
        opened = await trio.to_thread.run_sync(self._open_batch, names)
        try:
            headers = [
                frame_header(m.FetchMissing(name.path, "not_found") if o is None
                             else m.FetchItem(name.path, o[1]))
                for name, o in zip(names, opened)
            ]
            total = sum(map(len, headers)) + sum(o[1] for o in opened if o is not None)
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", FETCH_STREAM), (b"content-length", str(total).encode())]})
            for i, (header, o) in enumerate(zip(headers, opened)):
                last = i == len(names) - 1
                await send({"type": "http.response.body", "body": header,
                            "more_body": not last or (o is not None and o[1] > 0)})
                if o is not None and not await self._send_file(o[0], o[1], send, last):
                    return
        finally:
            _close_all(opened)

    # ---- compat endpoints ----

    async def compat_files(self, req: Request, parts: list[str], send) -> None:
        try:
            if len(parts) == 2:
                channel = validate_component(parts[0], "channel")
                quality = validate_component(parts[1], "quality")
                body = self.node.index.hours(channel, quality)
            elif len(parts) == 3:
                channel = validate_component(parts[0], "channel")
                quality = validate_component(parts[1], "quality")
                parse_hour(parts[2])
                flag = req.query.get("tombstones", ["false"])
                if len(flag) != 1 or flag[0] not in ("true", "false"):
                    raise HttpError(400, "bad_query", "tombstones must be true or false")
                names = self.node.index.replicable(channel, quality, parts[2])
                if flag[0] == "false":
                    names = [n for n in names if n.endswith(".ts")]
                body = names
            else:
                raise HttpError(404, "not_found", "use /files/CHANNEL/QUALITY[/HOUR]")
        except SegmentNameError as e:
            raise HttpError(400, "bad_name", str(e)) from None
        await send_response(send, 200, json_body(body), b"application/json")
