"""h11's receive buffer without its copies of body bytes.

h11 appends every read to a bytearray and slices each body chunk out of it again
(`maybe_extract_at_most` slices twice), and httpcore then copies the chunk into
`bytes`: four copies of every byte received, all on the event loop, most of a
catch-up's client CPU after the socket read itself (py-spy, issue 25). A read that
arrives while nothing else is buffered, and is taken whole as body, needs none of
them: this buffer keeps such a read as the `bytes` object it is and hands that same
object on (httpcore's `bytes(...)` of a `bytes` is no copy). Anything else (headers,
a read split between two events, chunked framing) goes through h11's own buffer,
unchanged.

Installed process-wide by `install()` (the client factory calls it, with httpcore's
read size): h11 builds a `ReceiveBuffer` per connection from `h11._connection`'s
global. tests/test_client_tuning.py fails if an h11 release moves it.
"""

from __future__ import annotations

import h11._connection
from h11._receivebuffer import ReceiveBuffer


class PassThroughReceiveBuffer(ReceiveBuffer):
    """`ReceiveBuffer` that keeps the last read, a `bytes`, as it is (`_whole`) after
    what h11's bytearray holds, and passes it on whole when the body takes it whole.
    A read that carries a response head and the body's beginning gives h11 only the
    head (the rest is sliced off once). h11's own methods only ever see its bytearray;
    whatever cannot be served so moves the read into it (`_spill`), as h11 would."""

    def __init__(self) -> None:
        super().__init__()
        self._whole: bytes | None = None

    def _spill(self) -> None:
        """From here on h11's own buffer holds everything (the rare path)."""
        if self._whole is not None:
            self._data += self._whole
            self._whole = None

    def _head_only(self) -> None:
        """Before h11 looks for lines: the read up to its first blank line goes to
        h11's buffer, the rest stays whole."""
        whole = self._whole
        if whole is None:
            return
        end = whole.find(b"\r\n\r\n") if not self._data else -1
        if end < 0 or end + 4 == len(whole):
            self._spill()
            return
        self._data += whole[:end + 4]
        self._whole = whole[end + 4:]

    def __iadd__(self, byteslike):
        if self._whole is None and not self._data and type(byteslike) is bytes:
            self._whole = byteslike
            return self
        self._spill()
        self._data += byteslike
        return self

    def __len__(self) -> int:
        return len(self._data) + (len(self._whole) if self._whole is not None else 0)

    def __bytes__(self) -> bytes:
        if self._whole is None:
            return super().__bytes__()
        if not self._data:
            return self._whole  # httpcore asks for it after every response head
        return bytes(self._data) + self._whole

    def maybe_extract_at_most(self, count: int):
        if self._data:
            return super().maybe_extract_at_most(count)  # what h11 holds comes first
        whole = self._whole
        if whole is None:
            return None
        if count >= len(whole):
            self._whole = None
            self._next_line_search = 0
            self._multiple_lines_search = 0
            return whole
        self._spill()
        return super().maybe_extract_at_most(count)

    def maybe_extract_next_line(self):
        self._head_only()
        return super().maybe_extract_next_line()

    def maybe_extract_lines(self):
        self._head_only()
        return super().maybe_extract_lines()

    def is_next_line_obviously_invalid_request_line(self) -> bool:
        self._spill()
        return super().is_next_line_obviously_invalid_request_line()


def install() -> None:
    """Make every h11 connection of this process use the pass-through buffer
    (idempotent)."""
    h11._connection.ReceiveBuffer = PassThroughReceiveBuffer  # type: ignore[attr-defined]
