"""The body of a batch fetch response: one frame per requested segment, in order.

A frame is a 2-byte big-endian header length, the header (an encoded `FetchItem`
or `FetchMissing` message), and for a `FetchItem` exactly `size` segment bytes.
One response carries many segments, so a catch-up pays the per-request cost of
HTTP once per batch instead of once per segment.

`FetchStreamReader` is the sans-I/O parser for the receiving side: feed it bytes
as they arrive, it returns events. It trusts nothing: every header is bounded and
validated, every frame must answer the next requested path, no segment may be
larger than the limit, and nothing may follow the last answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import limits
from . import messages as m
from .errors import ProtocolError

_LENGTH_BYTES = 2


def frame_header(message: m.FetchItem | m.FetchMissing) -> bytes:
    """The bytes that open one frame (a `FetchItem`'s segment bytes follow them)."""
    header = m.encode(message)
    if len(header) > limits.MAX_FRAME_HEADER:
        raise ProtocolError(f"frame header of {len(header)} bytes is over the limit")
    # what is sent must be what every reader accepts (e.g. no string over MAX_STRING)
    m.decode(header, (m.FetchItem, m.FetchMissing), limits.MAX_FRAME_HEADER)
    return len(header).to_bytes(_LENGTH_BYTES, "big") + header


@dataclass(frozen=True)
class ItemStart:
    """A segment's bytes begin: `size` of them, as `ItemData` events, then `ItemEnd`."""

    path: str
    size: int


@dataclass(frozen=True)
class ItemData:
    data: bytes | memoryview


@dataclass(frozen=True)
class ItemEnd:
    path: str


@dataclass(frozen=True)
class ItemMissing:
    path: str
    reason: str


FetchEvent = ItemStart | ItemData | ItemEnd | ItemMissing


class FetchStreamReader:
    """Incremental parser of one batch fetch response for the paths that were asked."""

    def __init__(self, paths: list[str], max_segment_bytes: int = limits.MAX_SEGMENT_BYTES):
        self._paths = list(paths)
        self._next = 0  # index of the path the next frame must answer
        self._max = max_segment_bytes
        self._buf = bytearray()  # an incomplete frame header
        self._left = 0  # segment bytes still to come for the current item
        self._current: str | None = None

    @property
    def done(self) -> bool:
        """Every requested path was answered."""
        return self._next == len(self._paths) and self._current is None

    def feed(self, data: bytes) -> list[FetchEvent]:
        """Bytes as they arrived -> events. Segment bytes are passed on without copying
        when a chunk lies inside one segment. Raises ProtocolError on bad input."""
        events: list[FetchEvent] = []
        view = memoryview(data)
        while view:
            if self._current is not None:
                take = min(self._left, len(view))
                events.append(ItemData(data if take == len(data) else view[:take]))
                view = view[take:]
                self._left -= take
                if self._left == 0:
                    events.append(ItemEnd(self._current))
                    self._current = None
                continue
            if self.done:
                raise ProtocolError("bytes after the last requested segment")
            view = self._take_header(view, events)
        return events

    def _take_header(self, view: memoryview, events: list[FetchEvent]) -> memoryview:
        if len(self._buf) < _LENGTH_BYTES:
            take = min(_LENGTH_BYTES - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) < _LENGTH_BYTES:
                return view
            length = int.from_bytes(self._buf, "big")
            if not 0 < length <= limits.MAX_FRAME_HEADER:
                raise ProtocolError(f"frame header length {length} is out of bounds")
        need = _LENGTH_BYTES + int.from_bytes(self._buf[:_LENGTH_BYTES], "big")
        take = min(need - len(self._buf), len(view))
        self._buf += view[:take]
        view = view[take:]
        if len(self._buf) < need:
            return view
        header = bytes(self._buf[_LENGTH_BYTES:])
        self._buf.clear()
        message = m.decode(header, (m.FetchItem, m.FetchMissing), limits.MAX_FRAME_HEADER)
        expected = self._paths[self._next]
        if message.path != expected:
            raise ProtocolError(f"frame answers {message.path}, expected {expected}")
        self._next += 1
        if isinstance(message, m.FetchMissing):
            events.append(ItemMissing(message.path, message.reason))
            return view
        if message.size > self._max:
            raise ProtocolError(f"{message.path}: {message.size} bytes is over the limit")
        events.append(ItemStart(message.path, message.size))
        self._current, self._left = message.path, message.size
        if message.size == 0:
            events.append(ItemEnd(message.path))
            self._current = None
        return view

    def finish(self) -> None:
        """The response ended: raises ProtocolError unless every path was answered."""
        if self._buf or self._current is not None:
            raise ProtocolError("response ended inside a frame")
        if not self.done:
            raise ProtocolError(
                f"response ended after {self._next} of {len(self._paths)} segments")
