"""DiskTombstones and Ingest with real files: a tombstone on disk hides its segment
before the index has heard of it, and what a check finds is indexed at once."""

from __future__ import annotations

import errno
import os
import time

import pytest
import trio

from agent.archive.disk_tombstones import DiskTombstones
from agent.archive.index import ArchiveIndex
from agent.archive.ingest import Ingest
from agent.archive.store import Store
from agent.telemetry.metrics import Metrics
from helpers import hours_ago, make_name, touch_tombstone, write_segment_file
from protocol.digests import hour_digest
from protocol.names import Kind

LATER = 3600 * 1_000_000_000  # a clock an hour ahead: no read counts as racy


def segments(root, count: int):
    names = []
    start = hours_ago(5).replace(minute=0)
    for i in range(count):
        data = os.urandom(100 + i)
        name = make_name(data, start.replace(second=2 * i))
        write_segment_file(root, name, data)
        names.append(name)
    return names


def indexed(index: ArchiveIndex, names) -> None:
    for name in names:
        index.add(name, Kind.SEGMENT)


def age_directory(path) -> None:
    """Set the directory's mtime an hour back: a later entry then moves it for sure
    (its ctime stays now: only the fake clock makes the stamp trusted)."""
    old = time.time_ns() - LATER
    os.utime(path, ns=(old, old))


async def test_listing_check_indexes_a_tombstone_the_watcher_has_not_reported(tmp_path):
    store, index = Store(tmp_path), ArchiveIndex()
    names = segments(tmp_path, 3)
    indexed(index, names)
    found = []
    disk = DiskTombstones(store, index, found=lambda n: (found.append(n),
                                                        index.add(n, Kind.TOMBSTONE)))
    key = (names[0].channel, names[0].quality, names[0].hour)
    touch_tombstone(tmp_path, names[1])
    assert names[1].filename in index.replicable(*key)  # the index alone still shows it
    await disk.check_hour(*key)
    assert found == [names[1]]
    listed = index.replicable(*key)
    assert names[1].filename not in listed and names[1].tombstone_filename in listed
    assert index.hour_digests(*key[:2], key[2], key[2]) == [(key[2], hour_digest(listed))]
    await disk.check_hour(*key)  # known now: not found twice
    assert found == [names[1]]


async def test_an_unchanged_hour_is_trusted_and_a_changed_one_read(tmp_path):
    store, index = Store(tmp_path), ArchiveIndex()
    names = segments(tmp_path, 3)
    indexed(index, names)
    disk = DiskTombstones(store, index, clock_ns=lambda: time.time_ns() + LATER)
    key = (names[0].channel, names[0].quality, names[0].hour)
    touch_tombstone(tmp_path, names[0])
    age_directory(store.hour_dir(*key))
    await disk.check_hour(*key)  # read: the stamp is remembered
    assert index.has(names[0], Kind.TOMBSTONE)
    # take it out of the index behind the check's back: an unchanged directory is not
    # read again (one stat), so the check does not put it back
    index.discard(names[0], Kind.TOMBSTONE)
    await disk.check_hour(*key)
    assert not index.has(names[0], Kind.TOMBSTONE)
    # a new entry moves the stamp: read again, both found
    touch_tombstone(tmp_path, names[2])
    await disk.check_hour(*key)
    assert index.has(names[0], Kind.TOMBSTONE) and index.has(names[2], Kind.TOMBSTONE)


async def test_a_racy_read_is_not_trusted(tmp_path):
    """A read in the same tick as the directory's last change vouches for nothing:
    the next check reads it again."""
    store, index = Store(tmp_path), ArchiveIndex()
    names = segments(tmp_path, 2)
    indexed(index, names)
    key = (names[0].channel, names[0].quality, names[0].hour)
    directory = store.hour_dir(*key)
    disk = DiskTombstones(store, index, clock_ns=lambda: os.stat(directory).st_mtime_ns)
    touch_tombstone(tmp_path, names[0])
    await disk.check_hour(*key)
    index.discard(names[0], Kind.TOMBSTONE)
    await disk.check_hour(*key)  # racy: read again
    assert index.has(names[0], Kind.TOMBSTONE)


async def test_missing_hour_and_bounded_memory(tmp_path):
    store, index = Store(tmp_path), ArchiveIndex()
    disk = DiskTombstones(store, index, clock_ns=lambda: time.time_ns() + LATER,
                          max_hours=2)
    await disk.check_hour("desertbus", "source", "2020-01-01T00")  # no directory
    assert index.pairs() == []
    start = hours_ago(10).replace(minute=0)
    hours = []
    for h in range(4):
        data = os.urandom(50 + h)
        name = make_name(data, start.replace(hour=(start.hour + h) % 24))
        write_segment_file(tmp_path, name, data)
        hours.append((name.channel, name.quality, name.hour))
    for key in hours:
        await disk.check_hour(*key)
    assert len(disk._stamps) == 2
    # a tombstone touched into an hour the index has never seen is found too
    ghost = make_name(b"never here", hours_ago(30))
    touch_tombstone(tmp_path, ghost)
    await disk.check_hour(ghost.channel, ghost.quality, ghost.hour)
    assert index.replicable(ghost.channel, ghost.quality, ghost.hour) == [
        ghost.tombstone_filename]


async def test_serving_open_checks_the_tombstone_and_records_it(tmp_path):
    store, index = Store(tmp_path), ArchiveIndex()
    names = segments(tmp_path, 2)
    indexed(index, names)
    disk = DiskTombstones(store, index)
    f = await trio.to_thread.run_sync(disk.open_segment, names[0])
    assert f is not None
    f.close()
    touch_tombstone(tmp_path, names[0])
    assert await trio.to_thread.run_sync(disk.open_segment, names[0]) is None
    assert index.has(names[0], Kind.TOMBSTONE)  # recorded then and there
    assert disk.on_disk(names[0]) and not disk.on_disk(names[1])
    gone = make_name(b"gone", hours_ago(5))
    assert await trio.to_thread.run_sync(disk.open_segment, gone) is None
    assert not index.has(gone, Kind.TOMBSTONE)


async def test_peer_tombstone_is_indexed_before_its_file_appears(tmp_path):
    store, index = Store(tmp_path), ArchiveIndex()
    names = segments(tmp_path, 1)
    indexed(index, names)
    seen_at_create = []
    create = store.create_tombstone

    def watching_create(name):
        seen_at_create.append(index.has(name, Kind.TOMBSTONE))
        return create(name)

    store.create_tombstone = watching_create
    ingest = Ingest(store, index, Metrics())
    assert await ingest.accept_tombstone(names[0], source="push") == "stored"
    assert seen_at_create == [True]
    assert (tmp_path / names[0].tombstone_path).exists()
    assert await ingest.accept_tombstone(names[0], source="push") == "have"
    assert index.has(names[0], Kind.TOMBSTONE)


async def test_a_tombstone_that_could_not_be_written_is_not_indexed(tmp_path):
    """A full disk (the one thing mocked): the tombstone is refused and the index
    does not claim it."""
    store, index = Store(tmp_path), ArchiveIndex()
    names = segments(tmp_path, 1)
    indexed(index, names)

    def full(name):
        raise OSError(errno.ENOSPC, "No space left on device")

    store.create_tombstone = full
    ingest = Ingest(store, index, Metrics())
    with pytest.raises(OSError):
        await ingest.accept_tombstone(names[0], source="push")
    assert not index.has(names[0], Kind.TOMBSTONE)
    assert names[0].filename in index.replicable(names[0].channel, names[0].quality,
                                                 names[0].hour)
