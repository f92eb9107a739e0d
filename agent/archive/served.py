"""Reading a segment being served, hashed as it goes (push uploads, downloads, batch
fetches): the rotten bytes of a file never leave the node whole."""

from __future__ import annotations

from protocol.scrub import ServedBytesCheck


def read_checked(f, nbytes: int, check: ServedBytesCheck) -> bytes:
    """Read up to `nbytes` and hash them, in the worker thread that reads (not on the
    event loop); RottenBytes instead of the chunk that would complete a file whose
    bytes do not hash to its name."""
    chunk = f.read(nbytes)
    check.update(chunk)
    return chunk
