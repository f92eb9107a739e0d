#!/usr/bin/env python3
"""The floor of a verified copy on this machine: the least any catch-up that keeps
segsync's guarantees does per byte, with nothing else.

`copy_floor.py SRC DST` copies every segment file under SRC into DST the way a
catch-up must, minus everything that is not physics: a forked child reads each file
into one reused 1 MiB buffer, hashes it (rot must never be served: a file that does
not hash to its name is not sent whole) and sends it over a loopback socket pair;
the parent receives into one reused buffer, hashes it, writes it to a temp file,
checks the SHA-256 against the name, and fsyncs and renames it in one of 16 threads
while the next file streams in (fsyncs overlapping, as segsync's commits do); every
directory is fsynced at the end. No HTTP, no event loop, no framing beyond an 8-byte
size, no index. `--no-fsync` leaves out the fsyncs.

bench/backfill_throughput.py runs it as the `floor` copy beside segsync and
`rsync -a` (whole process timed, like them): how far segsync is from the floor, and
how far the floor itself is from `rsync -a`, which neither hashes nor fsyncs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import socket
from concurrent.futures import ThreadPoolExecutor

CHUNK = 1 << 20
COMMITS = 16


def segment_files(root: str) -> list[str]:
    """Every `.ts` file under `root` (not dot-directories: agents' own state)."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in files
                if f.endswith(".ts")]
    return sorted(out)


def name_hash(rel: str) -> str:
    """The hash text a segment's name ends with (`...-HASH.ts`, 43 characters of
    URL-safe base64, which may hold a "-" itself)."""
    return rel[-46:-3]


def hash_text(h) -> str:
    """A finished SHA-256 as segment names write it (protocol.hashing.encode_hash)."""
    return base64.urlsafe_b64encode(h.digest()).decode("ascii").rstrip("=")


def send_all(root: str, names: list[str], sock: socket.socket) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    for rel in names:
        with open(os.path.join(root, rel), "rb", buffering=0) as f:
            left = os.fstat(f.fileno()).st_size
            sock.sendall(left.to_bytes(8, "big"))
            served = hashlib.sha256()
            while left:
                n = f.readinto(view[:min(CHUNK, left)])
                if not n:
                    raise OSError(f"{rel} shrank while sending")
                served.update(view[:n])
                if left == n and hash_text(served) != name_hash(rel):
                    raise OSError(f"{rel}: rotten, its last chunk is not sent")
                sock.sendall(view[:n])
                left -= n


def receive_all(root: str, names: list[str], sock: socket.socket, fsync: bool) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    made: set[str] = set()

    def commit(fd: int, temp: str, final: str) -> None:
        if fsync:
            os.fsync(fd)
        os.close(fd)
        os.rename(temp, final)

    with ThreadPoolExecutor(COMMITS) as pool:
        commits = []
        for rel in names:
            header = b""
            while len(header) < 8:
                more = sock.recv(8 - len(header))
                if not more:
                    raise OSError("sender stopped early")
                header += more
            left = int.from_bytes(header, "big")
            final = os.path.join(root, rel)
            directory = os.path.dirname(final)
            if directory not in made:
                os.makedirs(directory, exist_ok=True)
                made.add(directory)
            temp = final + ".part"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            got = hashlib.sha256()
            while left:
                n = sock.recv_into(view[:min(CHUNK, left)])
                if not n:
                    raise OSError("sender stopped early")
                got.update(view[:n])
                os.write(fd, view[:n])
                left -= n
            if hash_text(got) != name_hash(rel):
                os.close(fd)
                os.unlink(temp)
                raise OSError(f"{rel}: hash mismatch")
            commits.append(pool.submit(commit, fd, temp, final))
        for c in commits:
            c.result()
    if fsync:
        for directory in made:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def copy(src: str, dst: str, fsync: bool = True) -> int:
    """Copy every segment of `src` into `dst`; returns the number of files."""
    names = segment_files(src)
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the serving side
        ours.close()
        code = 1
        try:
            send_all(src, names, theirs)
            theirs.close()
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    try:
        receive_all(dst, names, ours, fsync)
    finally:
        ours.close()
        _, status = os.waitpid(pid, 0)
    if status:
        raise OSError(f"the sending process failed ({status})")
    return len(names)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--no-fsync", action="store_true")
    args = p.parse_args()
    copy(args.src, args.dst, fsync=not args.no_fsync)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
