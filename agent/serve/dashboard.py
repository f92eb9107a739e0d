"""The dashboard: `GET /` serves a page (static files of this package, no CDN) that
polls `GET /dashboard/state` and `GET /dashboard/coverage` as JSON.

With `--protect-reads`, a browser cannot send a bearer header on its own: it logs in
once by POSTing the token to `/dashboard/login` (a form on the page), which sets an
HttpOnly, SameSite=Strict cookie holding an HMAC of the token (never the token
itself). Scripts may send `Authorization: Bearer` instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import importlib.resources
import json
import urllib.parse
from typing import Awaitable, Callable

from protocol import endpoints
from protocol import messages as m
from protocol.coverage import MAX_MAP_HOURS, CoverageError

from ..archive.index import ArchiveIndex
from ..peers.client import ClientFactory, PeerError
from ..peers.kinds import PeerKinds
from ..peers.peer_set import PeerKind, PeerSet
from ..telemetry.latency_ring import LatencyRing
from .asgi import HttpError, Request, send_response
from .coverage_maps import PEER_LISTING_CONCURRENCY, local_maps, peer_maps, warm_spans

COOKIE = "segsync_dashboard"
MAX_LOGIN_BYTES = 4096
DEFAULT_HOURS = 24
MAX_HOURS = 336  # the default backfill window: a map bigger than that is not live
STATIC = {  # URL file name -> content type
    "dashboard.html": b"text/html; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]
assert MAX_HOURS <= MAX_MAP_HOURS


def session_value(token: str) -> str:
    """What the login cookie holds: derived from the token, not the token."""
    return hmac.new(token.encode(), b"segsync-dashboard-session", hashlib.sha256).hexdigest()


def _cookies(req: Request) -> dict[str, str]:
    raw = (req.header(b"cookie") or b"").decode("latin-1")
    out = {}
    for part in raw.split(";")[:32]:
        key, _, value = part.strip().partition("=")
        out[key] = value
    return out


def load_static() -> dict[str, bytes]:
    """The page's files, read once when the node is built (a few KiB; no file is read
    while serving)."""
    folder = importlib.resources.files(__package__).joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in (*STATIC, "login.html")}


class Dashboard:
    """HTTP handlers of the dashboard; given exactly what they show."""

    def __init__(
        self, index: ArchiveIndex, status: Callable[[], Awaitable[m.StatusReply]],
        latencies: LatencyRing, peers: PeerSet, clients: ClientFactory,
        token: str | None, protect_reads: bool,
        kinds: PeerKinds,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
    ) -> None:
        self.index = index
        self.kinds = kinds
        self.status = status
        self.latencies = latencies
        self.peers = peers
        self.clients = clients
        self.token = token if protect_reads else None
        self.clock = clock
        self.files = load_static()

    # ---- auth ----

    def authorized(self, req: Request) -> bool:
        if self.token is None:
            return True
        bearer = req.header(b"authorization") or b""
        if hmac.compare_digest(bearer, b"Bearer " + self.token.encode()):
            return True
        return hmac.compare_digest(_cookies(req).get(COOKIE, "").encode(),
                                   session_value(self.token).encode())

    async def login(self, req: Request, send) -> None:
        body = await req.body(MAX_LOGIN_BYTES)
        try:
            form = urllib.parse.parse_qs(body.decode("ascii"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "bad_form",
                            "login takes a form with one field, token") from None
        given = form.get("token", [""])[0].encode()
        if self.token is None or not hmac.compare_digest(given, self.token.encode()):
            return await self._login_page(send, 401, "wrong token")
        secure = "; Secure" if req.scope.get("scheme") == "https" else ""
        cookie = (f"{COOKIE}={session_value(self.token)}; Path=/; HttpOnly; "
                  f"SameSite=Strict{secure}")
        await send_response(send, 303, b"", b"text/plain",
                            [(b"location", b"/"), (b"set-cookie", cookie.encode())])

    async def _login_page(self, send, status: int, message: str = "") -> None:
        page = self.files["login.html"].replace(b"{message}", message.encode())
        await send_response(send, status, page, STATIC["dashboard.html"], SECURITY_HEADERS)

    # ---- routing ----

    async def route(self, req: Request, endpoint: str, rest: list[str], send) -> None:
        """`/` (endpoints.PAGE) and `/dashboard/NAME` (endpoints.DASHBOARD)."""
        if endpoint == endpoints.PAGE and not rest:
            _method(req, "GET")
            if not self.authorized(req):
                return await self._login_page(send, 401)
            return await self._send_static(send, "dashboard.html")
        what = rest[0] if endpoint == endpoints.DASHBOARD and len(rest) == 1 else ""
        if what == "login":
            _method(req, "POST")
            return await self.login(req, send)
        _method(req, "GET")
        if what in STATIC and what != "dashboard.html":
            return await self._send_static(send, what)  # the page's code: no secret
        if what not in ("state", "coverage"):
            raise HttpError(404, "not_found", "no such dashboard resource")
        if not self.authorized(req):
            raise HttpError(401, "unauthorized", "log in at / or send the bearer token")
        body = await (self.state() if what == "state" else self.coverage(req))
        await send_response(send, 200, json.dumps(body).encode(), b"application/json",
                            SECURITY_HEADERS)

    async def _send_static(self, send, name: str) -> None:
        await send_response(send, 200, self.files[name], STATIC[name], SECURITY_HEADERS)

    # ---- data ----

    async def warm(self) -> None:
        """Parse the index's names into map spans ahead of the first visitor (the
        longest window: seconds of CPU on a big archive, in a worker thread)."""
        await warm_spans(self.index, self.clock(), MAX_HOURS)

    async def state(self) -> dict:
        """The node's status (as /v1/status), plus the latency ring and the pairs."""
        status = (await self.status()).to_obj()
        return {**status, "push_latencies": self.latencies.snapshot(),
                "pairs": [list(p) for p in self.index.pairs()]}

    async def coverage(self, req: Request) -> dict:
        """?hours=N (1..336), ?peer=NAME (one of our peers) and ?diff=1 (this node
        against that peer)."""
        hours = _one(req, "hours", str(DEFAULT_HOURS))
        if not hours.isdigit() or not 1 <= int(hours) <= MAX_HOURS:
            raise HttpError(400, "bad_query", f"hours must be a number from 1 to {MAX_HOURS}")
        peer = _one(req, "peer", "")
        diff = _one(req, "diff", "0")
        if diff not in ("0", "1") or (diff == "1" and not peer):
            raise HttpError(400, "bad_query", "diff is 0 or 1, and 1 needs a peer")
        now = self.clock()
        await warm_spans(self.index, now, int(hours))
        if not peer:
            maps = local_maps(self.index, now, int(hours))
            return {"node": "self", "diff": False, "now": now.isoformat(),
                    "maps": [m.as_json() for m in maps]}
        chosen = next((p for p in self.peers if p.name == peer), None)
        if chosen is None:  # never a URL of the caller's choosing
            raise HttpError(400, "bad_query", f"{peer!r} is not the name of a peer of this node")
        try:
            kind = await self.kinds.kind(chosen)  # a peer of unknown kind is probed first
        except PeerError as e:
            raise HttpError(502, "peer_error", str(e)) from None
        if kind is not PeerKind.SEGSYNC:
            raise HttpError(400, "bad_query", f"{peer} is a {kind.value} peer: "
                            "maps of peers need /v1")
        try:
            async with self.clients.client(chosen, concurrency=PEER_LISTING_CONCURRENCY) as client:
                maps = await peer_maps(client, self.index, now, int(hours), diff == "1")
        except PeerError as e:
            raise HttpError(502, "peer_error", str(e)) from None
        except CoverageError as e:
            raise HttpError(400, "too_large", str(e)) from None
        return {"node": peer, "diff": diff == "1", "now": now.isoformat(),
                "maps": [m.as_json() for m in maps]}


def _one(req: Request, key: str, default: str) -> str:
    values = req.query.get(key, [default])
    if len(values) != 1:
        raise HttpError(400, "bad_query", f"{key} given more than once")
    return values[0]


def _method(req: Request, allowed: str) -> None:
    if req.method != allowed:
        raise HttpError(405, "bad_method", f"{req.method} not allowed here; use {allowed}")
