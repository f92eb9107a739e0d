"""Shared test helpers: real-format segments with correct names and hashes."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import httpx

from protocol.hashing import hash_bytes
from protocol.names import Kind, SegmentName, downloader_temp_filename, make_segment_name


def free_port() -> int:
    """A loopback port nobody listens on right now (bind to 0, read it, release it),
    for a subprocess that must be told its port before it starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 20.0,
                 log: Callable[[], str] = lambda: "", verify=True) -> None:
    """Until the agent process at `url` answers /healthz; an AssertionError carrying
    `log()` if it exits or stays silent for `timeout` seconds. `verify`: httpx's, for
    an https agent."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"agent on {url} exited with {proc.returncode}; "
                                 f"log:\n{log()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"agent on {url} not healthy; log:\n{log()}")
        time.sleep(0.02)


def make_name(
    data: bytes, start: dt.datetime, channel: str = "desertbus", quality: str = "source",
    duration: str = "2.0", type_: str = "full",
) -> SegmentName:
    return make_segment_name(channel, quality, start, duration, type_, hash_bytes(data))


def write_segment_file(root: Path, name: SegmentName, data: bytes) -> Path:
    """Write like a downloader does: temp name, then rename into place."""
    path = Path(root) / name.path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / downloader_temp_filename(name, name.hash_text)
    tmp.write_bytes(data)
    os.rename(tmp, path)
    return path


def write_segments(root: Path, count: int, start: dt.datetime, tag: int = 0,
                   size: int = 3000) -> list[SegmentName]:
    """`count` real segments of random bytes (sizes from `size` up), 2 s apart from
    `start` (`tag` microseconds later, to tell batches apart), written like a downloader
    does."""
    names = []
    for i in range(count):
        data = os.urandom(size + i)
        name = make_name(data, start + dt.timedelta(seconds=2 * i, microseconds=tag))
        write_segment_file(root, name, data)
        names.append(name)
    return names


def touch_tombstone(root: Path, name: SegmentName) -> Path:
    path = Path(root) / name.format(Kind.TOMBSTONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def hours_ago(hours: float, now: dt.datetime | None = None) -> dt.datetime:
    now = now or dt.datetime.now(dt.timezone.utc)
    return (now - dt.timedelta(hours=hours)).replace(second=0, microsecond=0)


def replicable_state(root: Path) -> dict[str, bytes | None]:
    """path -> bytes for visible segments, None for tombstones (what must converge)."""
    from agent.archive.store import Store

    store = Store(root)
    out: dict[str, bytes | None] = {}
    for channel, quality, hour, _ in store.scan():
        listing = store.list_hour(channel, quality, hour)
        base = f"{channel}/{quality}/{hour}/"
        for f in listing.segments:
            out[base + f] = (Path(root) / (base + f)).read_bytes()
        for f in listing.tombstones:
            out[base + f] = None
    return out


def peer_label(node, url: str) -> str:
    """The metric label `node` uses for the peer at `url`: its name."""
    peer = node.peers.by_url(url)
    return peer.name if peer else url.split("://", 1)[1]


def push_state(node, url: str):
    """What `node`'s pusher shows of the peer at `url`."""
    return node.pusher.state(node.peers.by_url(url))


def write_segment(store, name: SegmentName, chunks, expected_size: int | None = None,
                  write=os.write) -> str:
    """Write a whole segment through the store's writer at once: 'stored' or 'have',
    or raises what the writer raises."""
    if store.has_segment(name) and not store.has_tombstone(name):
        return "have"
    with store.open_writer(name, expected_size, write) as writer:
        for chunk in chunks:
            writer.write(chunk)
        return writer.commit()
