"""A full disk: writes fail cleanly, temp files go, the agent keeps serving and recovers.

Two variants: an injected ENOSPC (a disk with N bytes free, at the os.write level,
short write included) that always runs, and a real size-limited tmpfs mount, skipped
with the reason when this machine does not allow mounting.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
import uuid

import httpx
import pytest
import trio

from agent.archive.store import Store
from conftest import wait_until
from fault_helpers import AgentProcess, audit_archive
from helpers import hours_ago, make_name, replicable_state, touch_tombstone, write_segment_file, push_state, write_segment


class FullDisk:
    """os.write against a disk with `free` bytes left: short write, then ENOSPC."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.refused = 0

    def write(self, fd: int, data) -> int:
        if self.free <= 0:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.write(fd, bytes(data[: self.free]))
        self.free -= n
        return n

    def check(self) -> None:
        if self.free <= 0:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fill_disk_of(node, disk: FullDisk) -> None:
    """Route node's segment writes and tombstone creation through the full disk."""
    store = node.store
    open_writer, create_tombstone = store.open_writer, store.create_tombstone

    def full_open_writer(name, expected_size=None, write=os.write):
        return open_writer(name, expected_size, disk.write)

    def full_create_tombstone(name):
        disk.check()
        return create_tombstone(name)

    store.open_writer = full_open_writer
    store.create_tombstone = full_create_tombstone


async def no_temps_stay(root, timeout: float = 10.0):
    """An audit without temp files. Pushes and backfill rounds keep retrying on a full
    disk: each makes a temp file that the refused write removes again, so one may
    exist at any instant; none may stay."""
    with trio.fail_after(timeout):
        while (audit := audit_archive(root)).temps:
            await trio.sleep(0.01)
    return audit


async def test_injected_enospc(cluster_factory):
    async with cluster_factory(2, backfill_interval=0.3, backoff_cap=0.5) as c:
        a, b = c.nodes
        before = os.urandom(50_000)
        old = make_name(before, hours_ago(5))
        write_segment_file(c.root(1), old, before)
        doomed_data = os.urandom(1000)
        doomed = make_name(doomed_data, hours_ago(6))
        write_segment_file(c.root(1), doomed, doomed_data)
        await wait_until(lambda: (c.root(0) / old.path).exists()
                         and (c.root(0) / doomed.path).exists())

        disk = FullDisk(250_000)
        fill_disk_of(b, disk)
        names = []
        for i in range(6):
            data = os.urandom(100_000)
            name = make_name(data, hours_ago(1).replace(second=i))
            write_segment_file(c.root(0), name, data)
            names.append(name)
        await wait_until(lambda: disk.refused >= 6, timeout=20)
        touch_tombstone(c.root(0), doomed)  # B must take it but has no room
        await wait_until(lambda: disk.refused >= 12, timeout=20)
        await trio.sleep(0.5)

        audit = await no_temps_stay(c.root(1))
        assert audit.bad == []
        stored = [n for n in names if (c.root(1) / n.path).exists()]
        assert len(stored) < len(names)
        assert "507" in (push_state(a, b.url).last_error or ""), \
            push_state(a, b.url).last_error
        async with httpx.AsyncClient() as http:  # still serving everything it holds
            assert (await http.get(f"{b.url}/healthz")).status_code == 200
            r = await http.get(f"{b.url}/v1/segments/{old.path}")
            assert r.status_code == 200 and r.content == before
            r = await http.get(f"{b.url}/files/{old.channel}/{old.quality}")
            assert r.status_code == 200 and old.hour in r.json()
            # a write that cannot fit is a clear 507, not a crash
            data = os.urandom(10_000)
            late = make_name(data, hours_ago(2))
            r = await http.put(f"{b.url}/v1/segments/{late.path}", content=data)
            assert r.status_code == 507 and b"storage_error" in r.content
            r = await http.post(f"{b.url}/v1/tombstone", content=_tombstone_msg(late))
            assert r.status_code == 507 and b"storage_error" in r.content
        await no_temps_stay(c.root(1))

        disk.free = 10**12  # space returns: backfill repairs all
        await wait_until(lambda: replicable_state(c.root(1)) == replicable_state(c.root(0)),
                         timeout=30)
        # a push and a backfill may both have fetched the last segment: the one that
        # finds it stored removes its temp file a moment later
        await no_temps_stay(c.root(1))
        assert (c.root(1) / doomed.tombstone_path).exists()


def _tombstone_msg(name) -> bytes:
    from protocol import messages as m

    return m.encode(m.Tombstone(name.tombstone_path))


def test_store_write_segment_enospc_leaves_nothing(tmp_path):
    """The store alone: every cut-off point of a short write, ENOSPC, temp file removed."""
    store = Store(tmp_path)
    data = os.urandom(300_000)
    name = make_name(data, hours_ago(3))
    for free in (0, 1, 65_536, 299_999):
        disk = FullDisk(free)
        with pytest.raises(OSError) as e:
            write_segment(store, name, [data[i:i + 50_000] for i in range(0, len(data), 50_000)],
                                len(data), write=disk.write)
        assert e.value.errno == errno.ENOSPC
        assert audit_archive(tmp_path).temps == []
        assert not store.has_segment(name)
    assert write_segment(store, name, [data], len(data)) == "stored"


# ---- a real small filesystem ----

@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); "
                    "the injected-ENOSPC test covers a full disk")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_full_tmpfs(tmp_path, small_fs):
    root = small_fs / "archive"
    receiver = AgentProcess(root, tmp_path / "run", backfill_interval=0.3)
    sender = AgentProcess(tmp_path / "s", tmp_path / "run", peers=[receiver.url],
                          backfill=False)
    receiver.peers = [sender.url]
    try:
        receiver.start()
        sender.start()
        names = []
        for i in range(8):  # 8 MB into a 3 MB disk
            data = os.urandom(1_000_000)
            name = make_name(data, hours_ago(1).replace(second=i))
            write_segment_file(sender.root, name, data)
            names.append(name)
        deadline = time.monotonic() + 30
        while "No space left" not in receiver.log_tail(200):
            assert time.monotonic() < deadline, receiver.log_tail()
            time.sleep(0.05)
        time.sleep(0.5)
        assert receiver.alive(), receiver.log_tail()
        # pushes and pulls keep trying: each makes a temp file that the refused write
        # removes again, so one may exist at any instant; none may stay
        deadline = time.monotonic() + 10
        while (audit := audit_archive(root)).temps:
            assert time.monotonic() < deadline, f"temp files stay: {audit.temps}"
            time.sleep(0.01)
        assert audit.bad == []
        assert 0 < audit.segments < len(names)
        assert httpx.get(f"{receiver.url}/healthz").status_code == 200
        held = next(n for n in names if (root / n.path).exists())
        r = httpx.get(f"{receiver.url}/v1/segments/{held.path}")
        assert r.status_code == 200 and r.content == (sender.root / held.path).read_bytes()

        subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
        deadline = time.monotonic() + 30
        while replicable_state(root) != replicable_state(sender.root):
            assert time.monotonic() < deadline, receiver.log_tail()
            assert receiver.alive(), receiver.log_tail()
            time.sleep(0.1)
        assert audit_archive(root).temps == []
    finally:
        sender.kill()
        receiver.kill()


def test_refused_write_leaves_no_new_directories(tmp_path):
    """A write that fails (bad bytes, full disk) takes the hour directories it made away."""
    store = Store(tmp_path)
    data = os.urandom(10_000)
    name = make_name(data, hours_ago(3), channel="brandnew")
    with pytest.raises(Exception):
        write_segment(store, name, [data[:-1] + bytes([data[-1] ^ 1])], len(data))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):
        write_segment(store, name, [data], len(data), write=FullDisk(100).write)
    assert list(tmp_path.iterdir()) == []
    # directories that hold something else stay
    other = make_name(b"other", hours_ago(3), channel="brandnew")
    assert write_segment(store, other, [b"other"], 5) == "stored"
    with pytest.raises(Exception):
        write_segment(store, name, [data[:-1] + bytes([data[-1] ^ 1])], len(data))
    assert sorted(p.name for p in (tmp_path / other.hour_path).iterdir()) == [other.filename]
