"""ASGI plumbing of the agent's HTTP face: the request as parsed from the scope,
bounded bodies, the errors that become 4xx replies, and sending a whole reply."""

from __future__ import annotations

import urllib.parse
from typing import AsyncIterator


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
    await send({"type": "http.response.start", "status": status,
                "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
