"""Extras directories: `ROOT/DIR/...`, arbitrary immutable files (emotes, chat media).

wubloader replicates them with `--extras DIR`: `GET /extras/DIR` lists every file
under ROOT/DIR as a path relative to DIR, `GET /segments/DIR/PATH` serves it. There
is no hash in the names, files are never replaced once they exist (media
`HASH.metadata.json` files differ between nodes: the first copy wins), and the
listing comes from a peer: every path is checked here before it names a file.

- refused (hostile, logged): empty, absolute, `\\`, NUL or control characters, an
  empty, `.` or `..` component, longer than MAX_PATH_BYTES;
- ignored (quietly): hidden (a component starting with `.`) and temp files
  (`*.temp`: wubloader's media downloader and atomic_write).
"""

from __future__ import annotations

import hashlib

from ..errors import FileNameError, SegmentNameError
from ..names import validate_component

MAX_PATH_BYTES = 1000  # a listed path, UTF-8 (msgpack strings hold 1024 bytes)
MAX_COMPONENT_BYTES = 255  # a file name on Linux
MAX_DEPTH = 32  # components of one path
TEMP_SUFFIX = ".temp"
BUCKETS = 256  # a set's paths are compared in buckets of sha256(path)[0]
# directories an extras name can never be: segsync's own state, wubloader's chat
RESERVED_DIRS = frozenset({"chat"})


def validate_extras_dir(name: object) -> str:
    """A `--extras` directory: one plain path component under ROOT."""
    try:
        validate_component(name, "extras directory")
    except SegmentNameError as e:
        raise FileNameError(str(e)) from None
    assert isinstance(name, str)
    if name in RESERVED_DIRS:
        raise FileNameError(f"extras directory {name!r} is reserved")
    return name


def check_extras_path(rel: object) -> str:
    """A path relative to an extras directory that stays inside it, or FileNameError
    saying why not. Says nothing about hidden or temp files (see `ignored_reason`)."""
    if not isinstance(rel, str):
        raise FileNameError("extras path must be a string")
    if not rel:
        raise FileNameError("extras path is empty")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in rel):
        raise FileNameError(f"extras path {rel!r} is not valid Unicode")
    if len(rel.encode("utf-8")) > MAX_PATH_BYTES:
        raise FileNameError(f"extras path is longer than {MAX_PATH_BYTES} bytes")
    if rel.startswith("/"):
        raise FileNameError(f"extras path {rel!r} is absolute")
    if "\\" in rel:
        raise FileNameError(f"extras path {rel!r} contains a backslash")
    if "\x00" in rel:
        raise FileNameError(f"extras path {rel!r} contains NUL")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rel):
        raise FileNameError(f"extras path {rel!r} contains a control character")
    parts = rel.split("/")
    if len(parts) > MAX_DEPTH:
        raise FileNameError(f"extras path {rel!r} is deeper than {MAX_DEPTH}")
    for part in parts:
        if not part:
            raise FileNameError(f"extras path {rel!r} has an empty component")
        if part in (".", ".."):
            raise FileNameError(f"extras path {rel!r} has a {part!r} component")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise FileNameError(f"extras path {rel!r} has a component over "
                                f"{MAX_COMPONENT_BYTES} bytes")
    return rel


def ignored_reason(rel: str) -> str | None:
    """Why a (checked) path is not replicated, or None: hidden or temp files."""
    if any(part.startswith(".") for part in rel.split("/")):
        return "hidden"
    if rel.endswith(TEMP_SUFFIX):
        return "temp"
    return None


def classify_extras_path(rel: object) -> tuple[str, str | None]:
    """('ok', None), ('ignored', why) or ('refused', why) for one listed path."""
    try:
        check_extras_path(rel)
    except FileNameError as e:
        return "refused", str(e)
    assert isinstance(rel, str)
    why = ignored_reason(rel)
    return ("ignored", why) if why else ("ok", None)


def extras_bucket(rel: str) -> str:
    """The bucket a path is compared in: two hex digits of SHA-256 of the path."""
    return hashlib.sha256(rel.encode("utf-8")).digest()[:1].hex()
