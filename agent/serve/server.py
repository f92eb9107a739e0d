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
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio

from protocol import endpoints, limits
from protocol import messages as m
from protocol.filesets.chat import CHAT_QUALITY
from protocol.errors import ProtocolError, SegmentNameError
from protocol.fetchstream import frame_header
from protocol.names import Kind, SegmentName, parse_hour, parse_path, validate_component
from protocol.scrub import RottenBytes, ServedBytesCheck, empty_file_is_rotten

from ..archive.disk_tombstones import DiskTombstones
from ..archive.index import ArchiveIndex
from ..archive.ingest import Ingest
from ..archive.served import read_ahead
from ..archive.store import Store, WriteRejected
from ..peers.bandwidth import Bandwidth, requester_key
from ..peers.transport import MIN_RATE
from ..telemetry.metrics import Metrics
from .asgi import ClientGone, HttpError, Request, send_response
from .fileset_server import V1_ENDPOINTS as FILESET_ENDPOINTS
from .fileset_server import FileSetServer

if TYPE_CHECKING:
    from .dashboard import Dashboard

log = logging.getLogger(__name__)

MSGPACK = b"application/msgpack"
FETCH_STREAM = b"application/x-segsync-fetch"
UPLOAD_BUFFER = 1024 * 1024  # bytes read per thread hop when serving a segment
BATCH_SERVES = 16  # batch fetches answered at once (each holds up to 64 open files)


def _close_all(opened: list) -> None:
    for o in opened:
        if o is not None:
            o[0].close()


def segment_from_path(path: str, not_segment: str) -> SegmentName:
    """A URL's segment path, validated: 400 bad_name for anything else."""
    try:
        name, kind = parse_path(path)
    except SegmentNameError as e:
        raise HttpError(400, "bad_name", str(e)) from None
    if kind is not Kind.SEGMENT:
        raise HttpError(400, "bad_name", not_segment)
    return name


def _requester(req: Request) -> str:
    """Who asks for (or sends) bytes, as the bandwidth limit's fairness key."""
    return requester_key(req.header(b"x-segsync-node"), req.scope.get("client"))


def json_body(value: Any) -> bytes:
    return json.dumps(value).encode()


@dataclass(frozen=True)
class ServerSettings:
    token: str | None = None  # every /v1 request must carry it, when set
    protect_reads: bool = False  # the read-only endpoints and /metrics need it too
    max_segment_bytes: int = limits.MAX_SEGMENT_BYTES
    request_timeout: float = 10.0

    @classmethod
    def from_config(cls, cfg) -> "ServerSettings":
        return cls(cfg.token, cfg.protect_reads, cfg.max_segment_bytes, cfg.request_timeout)


# (offered segment, the sender understands OfferLater) -> the reply; the downloader
# tracker answers (agent/push/recording.py)
AnswerOffer = Callable[[SegmentName, bool, str | None],
                      Awaitable[m.OfferReply | m.OfferLater]]


class App:
    """ASGI application of one node: what peers push goes to `ingest` (offers are
    answered by `answer_offer`); digests, listings and files come from `index` and
    `store`. A file being served whose bytes do not hash to its name goes to
    `report_rot` (the scrub). Serving and listing check the tombstones on disk first
    (`disk_tombstones`): one not yet indexed hides its segment all the same."""

    def __init__(self, ingest: Ingest, index: ArchiveIndex, store: Store, metrics: Metrics,
                 settings: ServerSettings, status: Callable[[], Awaitable[m.StatusReply]],
                 answer_offer: AnswerOffer, dashboard: Dashboard | None = None,
                 report_rot: Callable[[SegmentName], None] | None = None, *,
                 disk_tombstones: DiskTombstones,
                 files: FileSetServer | None = None,
                 bandwidth: Bandwidth | None = None) -> None:
        self.files = files  # chat batches and extras files (agent/serve/fileset_server.py)
        self.disk_tombstones = disk_tombstones
        self.bandwidth = bandwidth  # the node's limits: bytes served and received take from them
        self.dashboard = dashboard  # serves / and /dashboard/... (agent/serve/dashboard.py)
        self.report_rot = report_rot  # a served file that does not hash to its name
        self.ingest = ingest
        self.answer_offer = answer_offer
        self.index = index
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.status = status
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
        v1 = endpoints.is_v1(scope.get("path", ""))
        self.metrics.requests.labels(endpoints.endpoint_label(scope.get("path", ""))).inc()
        send = self._tolerant_send(scope, send)
        try:
            request = Request(scope, receive)
            await self.route(request, send)
        except HttpError as e:
            self.metrics.rejected.labels(e.code).inc()
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
            self.metrics.rejected.labels("client_gone").inc()
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
                self.metrics.rejected.labels("client_gone").inc()
                log.info("%s %s: connection closed while answering", scope.get("method"),
                         scope.get("path"))

        return tolerant

    # ---- routing ----

    async def route(self, req: Request, send) -> None:
        endpoint, rest = endpoints.split_endpoint(req.parts)
        if endpoint == endpoints.HEALTHZ and not rest:
            self._method(req, "GET")
            return await send_response(send, 200, b"ok\n", b"text/plain")
        if endpoint == endpoints.METRICS and not rest:
            self._method(req, "GET")
            self._check_read_auth(req)
            return await send_response(
                send, 200, self.metrics.render(), b"text/plain; version=0.0.4"
            )
        if endpoints.is_v1(endpoint):
            self._check_token(req)
            return await self.route_v1(req, endpoint, rest, send)
        if endpoint == endpoints.FILES:
            self._method(req, "GET")
            self._check_read_auth(req)
            if self.files is not None and len(rest) in (2, 3) and rest[1] == CHAT_QUALITY:
                return await self.files.chat_files(req, rest, send)
            return await self.compat_files(req, rest, send)
        if endpoint == endpoints.LEGACY_SEGMENTS:
            self._method(req, "GET")
            self._check_read_auth(req)
            if self.files is not None and self.files.wants_segments_path(rest):
                return await self.files.serve_legacy(req, rest, send)
            return await self.serve_segment(req, "/".join(rest), send)
        if endpoint == endpoints.EXTRAS and self.files is not None:
            self._method(req, "GET")
            self._check_read_auth(req)
            return await self.files.extras_listing(req, rest, send)
        if endpoint in (endpoints.PAGE, endpoints.DASHBOARD) and self.dashboard is not None:
            return await self.dashboard.route(req, endpoint, rest, send)
        raise HttpError(404, "not_found", "no such endpoint")

    async def route_v1(self, req: Request, endpoint: str, rest: list[str], send) -> None:
        if self.files is not None and endpoint in FILESET_ENDPOINTS:
            return await self.files.route_v1(req, endpoint, rest, send)
        if endpoint == endpoints.SEGMENTS and rest:
            path = "/".join(rest)
            if req.method == "PUT":
                return await self.receive_segment(req, path, send)
            self._method(req, "GET")
            return await self.serve_segment(req, path, send)
        if endpoint == endpoints.FETCH and not rest:
            self._method(req, "POST")
            return await self.serve_batch(req, send)
        handlers = {
            endpoints.OFFER: (m.Offer, lambda offer: self.on_offer(offer, req)),
            endpoints.TOMBSTONE: (m.Tombstone, self.on_tombstone),
            endpoints.PAIR_DIGESTS: (m.PairDigestsRequest, self.on_pair_digests),
            endpoints.HOUR_DIGESTS: (m.HourDigestsRequest, self.on_hour_digests),
            endpoints.LISTING: (m.ListingRequest, self.on_listing),
            endpoints.STATUS: (m.StatusRequest, self.on_status),
        }
        if rest or endpoint not in handlers:
            raise HttpError(404, "not_found", "no such /v1 endpoint")
        self._method(req, "POST")
        cls, handler = handlers[endpoint]
        body = await req.body(limits.MAX_REQUEST_BYTES)
        try:
            message = m.decode(body, cls, limits.MAX_REQUEST_BYTES)
        except ProtocolError as e:
            raise HttpError(400, "bad_message", str(e)) from None
        try:
            reply = await handler(message)
        except OSError as e:  # e.g. no room for a tombstone
            raise HttpError(507, "storage_error", f"could not store: {e.strerror}") from None
        await send_response(send, 200, m.encode(reply), MSGPACK)

    def _method(self, req: Request, allowed: str) -> None:
        if req.method != allowed:
            raise HttpError(405, "bad_method", f"{req.method} not allowed here; use {allowed}")

    def _check_token(self, req: Request) -> None:
        token = self.settings.token
        if token is None:
            return
        expected = b"Bearer " + token.encode()
        got = req.header(b"authorization") or b""
        if not hmac.compare_digest(got, expected):
            raise HttpError(401, "unauthorized", "missing or wrong bearer token")

    def _check_read_auth(self, req: Request) -> None:
        if self.settings.protect_reads:
            self._check_token(req)

    # ---- /v1 handlers ----

    async def on_offer(self, offer: m.Offer, req: Request) -> m.OfferReply | m.OfferLater:
        accepts_later = req.header(endpoints.OFFER_LATER_HEADER.encode()) == b"1"
        sender = req.header(b"x-segsync-node")  # the offering node's name (hole repair)
        return await self.answer_offer(offer.segment, accepts_later,
                                       sender.decode("ascii", "replace")[:200] if sender else None)

    async def on_tombstone(self, msg: m.Tombstone) -> m.Ack:
        status = await self.ingest.accept_tombstone(msg.segment, source="push")
        return m.Ack(status)

    async def on_pair_digests(self, req: m.PairDigestsRequest) -> m.PairDigests:
        pairs = self.index.pair_digests(req.first_hour, req.last_hour)
        return m.PairDigests(req.first_hour, req.last_hour, pairs)

    async def on_hour_digests(self, req: m.HourDigestsRequest) -> m.HourDigests:
        hours = self.index.hour_digests(req.channel, req.quality, req.first_hour, req.last_hour)
        return m.HourDigests(req.channel, req.quality, hours)

    async def on_listing(self, req: m.ListingRequest) -> m.Listing:
        await self.disk_tombstones.check_hour(req.channel, req.quality, req.hour)
        names = self.index.replicable(req.channel, req.quality, req.hour)
        return m.Listing(req.channel, req.quality, req.hour, names)

    async def on_status(self, req: m.StatusRequest) -> m.StatusReply:
        return await self.status()

    async def receive_segment(self, req: Request, path: str, send) -> None:
        name = segment_from_path(path, "PUT takes a .ts segment path")
        size = req.content_length()
        if size is None:
            raise HttpError(411, "length_required", "Content-Length is required")
        if size > self.settings.max_segment_bytes:
            raise HttpError(413, "too_large", f"segment larger than "
                            f"{self.settings.max_segment_bytes} bytes")
        # a sender that drips its body must not hold a slot for ever: bounded wait for a
        # slot, then the body must arrive at MIN_RATE (as the client demands of peers)
        timeout = self.settings.request_timeout
        with trio.move_on_after(timeout) as waiting:
            await self.upload_slots.acquire()
        if waiting.cancelled_caught:
            raise HttpError(429, "busy", "every upload slot is busy; retry later")
        try:
            with trio.move_on_after(timeout + size / MIN_RATE) as receiving:
                try:
                    async with aclosing(self._received(req, name, receiving)) as chunks:
                        status = await self.ingest.accept_segment(name, size, chunks,
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

    async def _received(self, req: Request, name: SegmentName, receiving: trio.CancelScope):
        """The body of a pushed segment, each chunk taken from the download limit (what
        it waited moves the body's deadline: the sender was not slow)."""
        if self.bandwidth is None:
            async for chunk in req.chunks():
                yield chunk
            return
        peer = _requester(req)
        async for chunk in req.chunks():
            receiving.deadline += await self.bandwidth.receive(len(chunk), name, peer)
            yield chunk

    def _open_for_serving(self, name: SegmentName):
        """(open file, size), or None when the segment is not served (absent,
        tombstoned: its tombstone on disk is checked first, indexed or not). An open
        file keeps its bytes even if the name goes away."""
        f = self.disk_tombstones.open_segment(name)
        if f is None:
            return None
        try:
            size = os.fstat(f.fileno()).st_size
            if empty_file_is_rotten(name.hash, size):  # no last chunk to hold back
                trio.from_thread.run_sync(self._rotten, name, "empty file")
                f.close()
                return None
            return f, size
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

    def _rotten(self, name: SegmentName, why: str) -> None:
        log.error("not serving %s: %s; sent to the scrub", name.path, why)
        if self.report_rot is not None:
            self.report_rot(name)

    async def _send_file(self, name: SegmentName, f, size: int, send, last: bool,
                         peer: str = "") -> bool:
        """Stream an open segment as body messages, hashed as they go; False if the
        file came up short (cut under us) or its bytes do not hash to the name (the
        last chunk is then never sent): nothing more may be sent, and returning leaves
        the response unfinished, so hypercorn closes the connection and the receiver
        rejects what it got instead of storing it."""
        sent = 0
        check = ServedBytesCheck(name.path, name.hash, size)
        chunks_in, chunks = trio.open_memory_channel(0)
        async with trio.open_nursery() as nursery:  # the next chunk is read while one is sent
            nursery.start_soon(read_ahead, f, size, check, UPLOAD_BUFFER, chunks_in)
            async with chunks:
                async for chunk in chunks:
                    if isinstance(chunk, RottenBytes):
                        self._rotten(name, str(chunk))
                        nursery.cancel_scope.cancel()
                        return False
                    if not chunk:
                        log.warning("%s shrank while being served", f.name)
                        nursery.cancel_scope.cancel()
                        return False
                    if self.bandwidth is not None:  # the upload limit, before it is sent
                        await self.bandwidth.send(len(chunk), name, peer)
                    sent += len(chunk)
                    self.metrics.bytes.labels("served").inc(len(chunk))
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
            await self._send_file(name, f, size, send, last=True, peer=_requester(req))

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
        with trio.move_on_after(self.settings.request_timeout) as waiting:
            await self.batch_slots.acquire()
        if waiting.cancelled_caught:
            raise HttpError(429, "busy", "every batch fetch slot is busy; retry later")
        try:
            await self._answer_unless_gone(
                req, send, lambda send: self._serve_batch(names, send, _requester(req)))
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

    async def _serve_batch(self, names: list[SegmentName], send, peer: str = "") -> None:
        opened = await trio.to_thread.run_sync(self._open_batch, names)
        try:
            headers = [
                frame_header(m.FetchMissing(name.path, "not_found") if o is None
                             else m.FetchItem(name.path, o[1]))
                for name, o in zip(names, opened, strict=True)
            ]
            total = sum(map(len, headers)) + sum(o[1] for o in opened if o is not None)
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", FETCH_STREAM), (b"content-length", str(total).encode())]})
            for i, (header, o) in enumerate(zip(headers, opened, strict=True)):
                last = i == len(names) - 1
                await send({"type": "http.response.body", "body": header,
                            "more_body": not last or (o is not None and o[1] > 0)})
                if o is not None and not await self._send_file(
                        names[i], o[0], o[1], send, last, peer):
                    return
        finally:
            _close_all(opened)

    # ---- compat endpoints ----

    async def compat_files(self, req: Request, parts: list[str], send) -> None:
        try:
            if len(parts) == 2:
                channel = validate_component(parts[0], "channel")
                quality = validate_component(parts[1], "quality")
                body = self.index.hours(channel, quality)
            elif len(parts) == 3:
                channel = validate_component(parts[0], "channel")
                quality = validate_component(parts[1], "quality")
                parse_hour(parts[2])
                flag = req.query.get("tombstones", ["false"])
                if len(flag) != 1 or flag[0] not in ("true", "false"):
                    raise HttpError(400, "bad_query", "tombstones must be true or false")
                await self.disk_tombstones.check_hour(channel, quality, parts[2])
                names = self.index.replicable(channel, quality, parts[2])
                if flag[0] == "false":
                    names = [n for n in names if n.endswith(".ts")]
                body = names
            else:
                raise HttpError(404, "not_found", "use /files/CHANNEL/QUALITY[/HOUR]")
        except SegmentNameError as e:
            raise HttpError(400, "bad_name", str(e)) from None
        except OSError as e:  # the hour's directory could not be read for tombstones
            raise HttpError(507, "storage_error", f"could not list: {e.strerror}") from None
        await send_response(send, 200, json_body(body), b"application/json")
