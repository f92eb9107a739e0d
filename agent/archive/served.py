"""Reading a segment being served, hashed as it goes (push uploads, downloads, batch
fetches): the rotten bytes of a file never leave the node whole."""

from __future__ import annotations

import trio

from protocol.scrub import RottenBytes, ServedBytesCheck


def read_checked(f, nbytes: int, check: ServedBytesCheck) -> bytes:
    """Read up to `nbytes` and hash them, in the worker thread that reads (not on the
    event loop); RottenBytes instead of the chunk that would complete a file whose
    bytes do not hash to its name."""
    chunk = f.read(nbytes)
    check.update(chunk)
    return chunk


async def read_ahead(f, size: int, check: ServedBytesCheck, chunk_size: int,
                     out: trio.MemorySendChannel) -> None:
    """Read and hash a segment being served, in worker threads, one chunk ahead of
    the task that sends it (`out` unbuffered: the next chunk is read and hashed while
    the current one is sent, and no more is held). Sends each chunk; `RottenBytes` as
    an item instead of the chunk completing a rotten file; b"" if the file came up
    short."""
    async with out:
        left = size
        while left > 0:
            try:
                chunk = await trio.to_thread.run_sync(
                    read_checked, f, min(chunk_size, left), check)
            except RottenBytes as e:
                await out.send(e)
                return
            await out.send(chunk)
            if not chunk:
                return
            left -= len(chunk)
