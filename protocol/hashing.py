"""The segment hash: SHA-256 of the bytes, URL-safe base64 without padding (43 chars)."""

from __future__ import annotations

import base64
import hashlib
import re

from .errors import SegmentNameError

HASH_BYTES = 32
HASH_TEXT_LENGTH = 43
_HASH_TEXT = re.compile(r"[A-Za-z0-9_-]{43}\Z")


def encode_hash(digest: bytes) -> str:
    """32 raw bytes -> the 43-character text used in segment names."""
    if len(digest) != HASH_BYTES:
        raise SegmentNameError(f"hash must be {HASH_BYTES} bytes, got {len(digest)}")
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def decode_hash(text: str) -> bytes:
    """The 43-character name text -> 32 raw bytes; rejects anything non-canonical."""
    if not isinstance(text, str) or not _HASH_TEXT.match(text):
        raise SegmentNameError(
            f"hash {text!r} is not {HASH_TEXT_LENGTH} URL-safe base64 characters"
        )
    raw = base64.urlsafe_b64decode(text + "=")
    if encode_hash(raw) != text:
        # The last character carries 2 unused bits; only the canonical form names a file.
        raise SegmentNameError(f"hash {text!r} is not canonical base64")
    return raw


class SegmentHasher:
    """Incremental segment hash, fed chunk by chunk while streaming."""

    __slots__ = ("_sha", "size")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._sha.update(chunk)
        self.size += len(chunk)

    def digest(self) -> bytes:
        return self._sha.digest()

    def text(self) -> str:
        return encode_hash(self._sha.digest())


def hash_bytes(data: bytes) -> bytes:
    """The raw segment hash of a whole byte string."""
    return hashlib.sha256(data).digest()
