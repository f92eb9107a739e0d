"""Chat batch names, byte-compatible with wubloader's chat archiver.

    ROOT/CHANNEL/chat/HOUR/MM:SS-HASH.json        a batch of one minute's messages
    ROOT/CHANNEL/chat/HOUR/MM:SS-HASH.tombstone   an operator hid that batch

HASH is the SHA-256 of the file's bytes, URL-safe base64 without padding (the
segment hash rule), so a batch is verified by its name like a segment. Every node's
archiver writes its own batches and a merger unions batches of one minute into a new
file and deletes the old ones: a batch that goes away locally was merged, never a
deletion to replicate. The archiver writes `NAME.UUID.temp` first: never replicated.
Within a chat set a batch is named by its relative path `HOUR/FILE`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import FileNameError, SegmentNameError
from ..hashing import decode_hash, encode_hash, hash_bytes
from ..names import parse_hour, validate_component

CHAT_QUALITY = "chat"
BATCH_SUFFIX = ".json"
TOMBSTONE_SUFFIX = ".tombstone"
ARCHIVER_TEMP_SUFFIX = ".temp"  # wubloader's atomic_write: NAME.UUID.temp
_NAME = re.compile(r"([0-9]{2}):([0-9]{2})-([A-Za-z0-9_-]{43})(\.json|\.tombstone)\Z")


@dataclass(frozen=True, slots=True)
class ChatName:
    """One chat batch (or its tombstone) of one channel."""

    channel: str
    hour: str
    time: str  # MM:SS, the batch's minute within the hour
    hash: bytes
    tombstone: bool = False

    @property
    def stem(self) -> str:
        return f"{self.time}-{encode_hash(self.hash)}"

    @property
    def filename(self) -> str:
        return self.stem + (TOMBSTONE_SUFFIX if self.tombstone else BATCH_SUFFIX)

    @property
    def rel(self) -> str:
        """Its path within the channel's chat set: `HOUR/FILE`."""
        return f"{self.hour}/{self.filename}"

    @property
    def path(self) -> str:
        """Its path under the archive root: `CHANNEL/chat/HOUR/FILE`."""
        return f"{self.channel}/{CHAT_QUALITY}/{self.rel}"

    @property
    def batch(self) -> "ChatName":
        return ChatName(self.channel, self.hour, self.time, self.hash, False)

    @property
    def as_tombstone(self) -> "ChatName":
        return ChatName(self.channel, self.hour, self.time, self.hash, True)


def is_archiver_temp(filename: str) -> bool:
    """The chat archiver's (and wubloader's media downloader's) temp files."""
    return filename.endswith(ARCHIVER_TEMP_SUFFIX)


def parse_chat_filename(channel: str, hour: str, filename: object) -> ChatName:
    """A file name found in CHANNEL/chat/HOUR -> its batch name; FileNameError why not."""
    try:
        validate_component(channel, "channel")
        parse_hour(hour)
    except SegmentNameError as e:
        raise FileNameError(str(e)) from None
    if not isinstance(filename, str):
        raise FileNameError("chat file name must be a string")
    match = _NAME.match(filename)
    if not match:
        raise FileNameError(f"{filename!r} is not MM:SS-HASH.json or MM:SS-HASH.tombstone")
    minutes, seconds, hash_text, suffix = match.groups()
    if int(minutes) > 59 or int(seconds) > 59:
        raise FileNameError(f"{filename!r}: time {minutes}:{seconds} out of range")
    try:
        digest = decode_hash(hash_text)
    except SegmentNameError as e:
        raise FileNameError(str(e)) from None
    return ChatName(channel, hour, f"{minutes}:{seconds}", digest, suffix == TOMBSTONE_SUFFIX)


def parse_chat_rel(channel: str, rel: object) -> ChatName:
    """`HOUR/FILE` within a channel's chat set -> its name."""
    if not isinstance(rel, str):
        raise FileNameError("chat path must be a string")
    parts = rel.split("/")
    if len(parts) != 2:
        raise FileNameError(f"chat path {rel!r} is not HOUR/MM:SS-HASH.json")
    return parse_chat_filename(channel, parts[0], parts[1])


def batch_hash(data: bytes) -> bytes:
    """The hash a batch's name carries: SHA-256 of its bytes."""
    return hash_bytes(data)


def batch_name_for(channel: str, hour: str, time: str, data: bytes) -> ChatName:
    """The name the archiver gives a batch of these bytes (wubloader's write_batch)."""
    return parse_chat_filename(channel, hour, f"{time}-{encode_hash(batch_hash(data))}"
                               f"{BATCH_SUFFIX}")


def matches_name(name: ChatName, data: bytes) -> bool:
    return not name.tombstone and batch_hash(data) == name.hash
