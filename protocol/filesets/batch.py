"""The body of a file batch reply (`POST /v1/file-fetch`): small chat batches and
extras files, many in one response.

One frame per requested path, in the order asked: a 2-byte big-endian header
length, the header (`FileItem {path, size, sha256}` or `FileMissing {path,
reason}`), and for a `FileItem` exactly `size` bytes. The reply is small by
construction (at most `MAX_BATCH_BYTES` of files), so it is parsed whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from . import sets as fs
from .. import limits
from .. import messages as m
from ..errors import ProtocolError

_LENGTH_BYTES = 2


def frame(header: m.FileItem | m.FileMissing, data: bytes = b"") -> bytes:
    encoded = m.encode(header)
    if len(encoded) > limits.MAX_FRAME_HEADER:
        raise ProtocolError(f"frame header of {len(encoded)} bytes is over the limit")
    return len(encoded).to_bytes(_LENGTH_BYTES, "big") + encoded + data


def item_frame(path: str, data: bytes) -> bytes:
    return frame(m.FileItem(path, len(data), hashlib.sha256(data).digest()), data)


@dataclass(frozen=True)
class BatchItem:
    path: str
    data: bytes | None  # None: not sent (`reason`) or not what its header said
    reason: str | None = None


def parse_batch(body: bytes, paths: list[str],
                max_bytes: int = fs.MAX_BATCH_BYTES + 64 * 1024 * 4) -> list[BatchItem]:
    """A whole reply -> one item per asked path, in order. A file whose bytes do not
    hash to its header's sha256 comes back with data None and reason 'hash_mismatch';
    anything malformed (wrong order, truncated, extra bytes) is a ProtocolError."""
    if len(body) > max_bytes:
        raise ProtocolError(f"file batch larger than {max_bytes} bytes")
    view = memoryview(body)
    pos = 0
    out: list[BatchItem] = []
    for expected in paths:
        if pos + _LENGTH_BYTES > len(view):
            raise ProtocolError(f"file batch ended after {len(out)} of {len(paths)} files")
        length = int.from_bytes(view[pos:pos + _LENGTH_BYTES], "big")
        pos += _LENGTH_BYTES
        if not 0 < length <= limits.MAX_FRAME_HEADER or pos + length > len(view):
            raise ProtocolError("file batch frame header out of bounds")
        header = m.decode(bytes(view[pos:pos + length]), (m.FileItem, m.FileMissing),
                          limits.MAX_FRAME_HEADER)
        pos += length
        if header.path != expected:
            raise ProtocolError(f"frame answers {header.path!r}, expected {expected!r}")
        if isinstance(header, m.FileMissing):
            out.append(BatchItem(expected, None, header.reason))
            continue
        if pos + header.size > len(view):
            raise ProtocolError(f"file batch ended inside {expected!r}")
        data = bytes(view[pos:pos + header.size])
        pos += header.size
        if hashlib.sha256(data).digest() != header.sha256:
            out.append(BatchItem(expected, None, "hash_mismatch"))
        else:
            out.append(BatchItem(expected, data))
    if pos != len(view):
        raise ProtocolError("bytes after the last requested file")
    return out


def fetch_batches(wanted: list[tuple[str, int | None]],
                  max_files: int = fs.MAX_BATCH_FILES,
                  max_bytes: int = fs.MAX_BATCH_BYTES // 2,
                  single_over: int = fs.BATCHED_FILE_BYTES
                  ) -> tuple[list[list[str]], list[str]]:
    """Split what to fetch into batches (small files of known size, up to `max_files`
    and `max_bytes` each) and the files fetched one GET each (large or unknown size)."""
    batches: list[list[str]] = []
    singles: list[str] = []
    current: list[str] = []
    total = 0
    for rel, size in wanted:
        if size is None or size > single_over:
            singles.append(rel)
            continue
        if current and (len(current) >= max_files or total + size > max_bytes):
            batches.append(current)
            current, total = [], 0
        current.append(rel)
        total += size
    if current:
        batches.append(current)
    return batches, singles
