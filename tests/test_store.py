import datetime as dt
import errno
import os
from pathlib import Path

import pytest

from agent.archive.store import (
    MAX_WRITE,
    Store,
    Tombstoned,
    WriteRejected,
    classify_hour,
    parents_to_sync,
    write_all,
    writev_all,
)
from protocol.digests import hour_digest
from protocol.selection import Hole
from helpers import hours_ago, make_name, touch_tombstone, write_segment_file, write_segment

T0 = dt.datetime(2019, 11, 13, 2, 45, 51, 608000, tzinfo=dt.timezone.utc)


def chunks(data: bytes, n: int = 7):
    for i in range(0, len(data), n):
        yield data[i:i + n]


def visible_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_write_segment_atomic_and_listed(tmp_path):
    store = Store(tmp_path)
    data = os.urandom(10_000)
    name = make_name(data, T0)
    assert write_segment(store, name, chunks(data), expected_size=len(data)) == "stored"
    assert (tmp_path / name.path).read_bytes() == data
    listing = store.list_hour(name.channel, name.quality, name.hour)
    assert listing.segments == [name.filename]
    assert store.channels() == ["desertbus"]
    assert store.qualities("desertbus") == ["source"]
    assert store.hours("desertbus", "source") == [name.hour]
    assert write_segment(store, name, chunks(data)) == "have"


def test_hash_mismatch_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    data = os.urandom(1000)
    name = make_name(data, T0)
    with pytest.raises(WriteRejected) as info:
        # the last byte changed (a fixed b"x" was the same byte 1 time in 256)
        write_segment(store, name, [data[:-1] + bytes([data[-1] ^ 1])])
    assert info.value.reason == "hash_mismatch"
    assert visible_files(tmp_path) == []


def test_size_mismatch_and_too_large(tmp_path):
    store = Store(tmp_path, max_segment_bytes=500)
    data = os.urandom(400)
    name = make_name(data, T0)
    with pytest.raises(WriteRejected) as info:
        write_segment(store, name, [data], expected_size=401)
    assert info.value.reason == "size_mismatch"
    with pytest.raises(WriteRejected) as info:
        write_segment(store, name, [data], expected_size=300)
    assert info.value.reason == "too_large"
    big = os.urandom(600)
    with pytest.raises(WriteRejected) as info:
        write_segment(store, make_name(big, T0), chunks(big, 100))
    assert info.value.reason == "too_large"
    assert visible_files(tmp_path) == []


def test_short_writes_loop_until_done(tmp_path):
    store = Store(tmp_path)
    data = os.urandom(3000)
    name = make_name(data, T0)
    calls = []

    def one_byte(fd, buf):
        calls.append(1)
        return os.write(fd, bytes(buf[:1]))

    assert write_segment(store, name, chunks(data, 1000), write=one_byte) == "stored"
    assert (tmp_path / name.path).read_bytes() == data
    assert len(calls) == 3000


def test_write_error_removes_temp(tmp_path):
    store = Store(tmp_path)
    data = os.urandom(3000)
    name = make_name(data, T0)

    def full_disk(fd, buf):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_segment(store, name, [data], write=full_disk)
    assert visible_files(tmp_path) == []


def test_write_all_rejects_no_progress():
    with pytest.raises(OSError):
        write_all(0, b"abc", lambda fd, b: 0)


def test_crash_between_write_and_rename(tmp_path):
    store = Store(tmp_path)
    data = os.urandom(5000)
    name = make_name(data, T0)
    writer = store.open_writer(name, len(data))
    writer.write(data)
    # the process dies here: no commit, no abort
    assert not (tmp_path / name.path).exists()
    assert store.list_hour(name.channel, name.quality, name.hour).segments == []
    leftovers = [p.name for p in (tmp_path / name.hour_path).iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".segsync-")
    list(Store(tmp_path).scan(remove_temp=True))  # what an agent does at start-up
    assert list((tmp_path / name.hour_path).iterdir()) == []


def test_tombstone_hides_and_refuses(tmp_path):
    store = Store(tmp_path)
    data = os.urandom(100)
    name = make_name(data, T0)
    write_segment_file(tmp_path, name, data)
    assert store.create_tombstone(name) is True
    assert store.create_tombstone(name) is False
    listing = store.list_hour(name.channel, name.quality, name.hour)
    assert listing.segments == []
    assert listing.hidden == [name.filename]
    assert listing.tombstones == [name.tombstone_filename]
    assert listing.replicable == [name.tombstone_filename]
    with pytest.raises(FileNotFoundError):
        store.open_segment(name)
    # refused even after the operator deleted the .ts
    (tmp_path / name.path).unlink()
    with pytest.raises(Tombstoned):
        write_segment(store, name, [data])
    assert not (tmp_path / name.path).exists()


def test_tombstone_without_segment_creates_hour(tmp_path):
    store = Store(tmp_path)
    name = make_name(b"x", T0)
    store.create_tombstone(name)
    assert (tmp_path / name.tombstone_path).exists()
    assert store.list_hour(name.channel, name.quality, name.hour).tombstones == [
        name.tombstone_filename
    ]


def test_temp_dot_and_bad_names_not_listed(tmp_path, caplog):
    store = Store(tmp_path)
    data = os.urandom(100)
    good = make_name(data, T0)
    write_segment_file(tmp_path, good, data)
    temp = make_name(b"t", T0.replace(minute=1), type_="temp")
    write_segment_file(tmp_path, temp, b"t")
    hour = tmp_path / good.hour_path
    (hour / ".hidden.ts").write_bytes(b"")
    (hour / "garbage.ts").write_bytes(b"")
    (hour / "notes.txt").write_bytes(b"")
    (tmp_path / ".git").mkdir()
    (tmp_path / "bad..name").mkdir()
    for _ in range(2):
        listing = store.list_hour(good.channel, good.quality, good.hour)
        assert listing.segments == [good.filename]
        assert store.channels() == ["desertbus"]
    warnings = [r for r in caplog.records if "garbage.ts" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not fatal


def test_digest_changes_exactly_with_replicable_listing(tmp_path):
    store = Store(tmp_path)
    a, b = os.urandom(50), os.urandom(60)
    na, nb = make_name(a, T0), make_name(b, T0.replace(minute=50))
    args = (na.channel, na.quality, na.hour)
    empty = store.hour_digest(*args)
    write_segment_file(tmp_path, na, a)
    d1 = store.hour_digest(*args)
    assert d1 != empty
    # a temp file, a dot file and our own temp file change nothing
    write_segment_file(tmp_path, make_name(b"z", T0, type_="temp"), b"z")
    (tmp_path / na.hour_path / ".segsync-abc.tmp").write_bytes(b"")
    assert store.hour_digest(*args) == d1
    write_segment_file(tmp_path, nb, b)
    d2 = store.hour_digest(*args)
    assert d2 != d1
    touch_tombstone(tmp_path, nb)
    d3 = store.hour_digest(*args)
    assert d3 != d2
    # deleting a hidden segment changes nothing replicable
    (tmp_path / nb.path).unlink()
    assert store.hour_digest(*args) == d3
    assert d3 == hour_digest([na.filename, nb.tombstone_filename])


def test_classify_hour_pure():
    data = b"abc"
    n = make_name(data, T0)
    listing = classify_hour(n.channel, n.quality, n.hour, [n.filename, n.tombstone_filename])
    assert listing.hidden == [n.filename] and listing.segments == []


def test_best_segments_by_rule_and_holes(tmp_path):
    store = Store(tmp_path)
    base = dt.datetime(2020, 1, 1, 5, 59, 58, tzinfo=dt.timezone.utc)
    made = {}

    def put(offset, data, **kw):
        name = make_name(data, base + dt.timedelta(seconds=offset), **kw)
        write_segment_file(tmp_path, name, data)
        made[(offset, kw.get("type_", "full"), len(data))] = name
        return name

    s0 = put(0, b"a" * 10)                       # previous hour, covers the start
    put(2, b"b" * 10, type_="partial")
    full2 = put(2, b"c" * 10)
    put(2, b"d" * 10, type_="suspect")
    put(4, b"e" * 5)
    bigger4 = put(4, b"f" * 50)
    tomb6 = put(6, b"g" * 10)
    touch_tombstone(tmp_path, tomb6)
    put(8.005, b"h" * 10, type_="temp")
    s10 = put(10, b"i" * 10)
    result = store.best_segments("desertbus", "source", base + dt.timedelta(seconds=1),
                                 base + dt.timedelta(seconds=14))
    names = [r.name if not isinstance(r, Hole) else r for r in result]
    assert names[0] == s0
    assert names[1] == full2
    assert names[2] == bigger4
    assert isinstance(names[3], Hole)
    assert names[3].start == base + dt.timedelta(seconds=6)
    assert names[3].end == base + dt.timedelta(seconds=10)
    assert names[4] == s10
    assert isinstance(names[5], Hole)


def test_small_gap_is_not_a_hole(tmp_path):
    store = Store(tmp_path)
    base = dt.datetime(2020, 1, 1, 5, 0, 0, tzinfo=dt.timezone.utc)
    a = make_name(b"a", base)
    b = make_name(b"b", base + dt.timedelta(seconds=2, milliseconds=9))
    write_segment_file(tmp_path, a, b"a")
    write_segment_file(tmp_path, b, b"b")
    result = store.best_segments("desertbus", "source", base, base + dt.timedelta(seconds=4))
    assert [r.name for r in result] == [a, b]


def test_writev_all_loops_over_short_vectored_writes(tmp_path):
    """Every short-write pattern: within a buffer, at a boundary, over several buffers,
    and more buffers than one writev takes."""
    rng_chunks = [os.urandom(n) for n in (1, 0, 700, 3, 4096, 1500, 0, 2)]
    many = [bytes([i % 256]) * 3 for i in range(2500)]  # more than IOV_MAX buffers
    for chunks in (rng_chunks, many):
        expected = b"".join(chunks)
        for cap in (1, 2, 5, 699, 700, 701, 10_000, None):
            path = tmp_path / f"out-{len(chunks)}-{cap}"
            offered = []

            def short_writev(fd, buffers, cap=cap):
                offered.append(len(buffers))
                data = b"".join(bytes(b) for b in buffers)
                return os.write(fd, data if cap is None else data[:cap])

            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                writev_all(fd, chunks, short_writev)
            finally:
                os.close(fd)
            assert path.read_bytes() == expected, cap
            assert max(offered) <= 1024


def test_writev_all_offers_at_most_max_write_bytes(tmp_path):
    """Large chunks are cut: no call is offered more than `max_write` bytes, and the
    bytes still arrive whole and in order (also when calls write short)."""
    chunks = [os.urandom(n) for n in (300_000, 5, 70_000, 0, 262_144, 1)]
    expected = b"".join(chunks)
    for max_write, cap in ((MAX_WRITE, None), (MAX_WRITE, 100_000), (1000, None), (7, 3)):
        path = tmp_path / f"out-{max_write}-{cap}"
        offered = []

        def capped_writev(fd, buffers, cap=cap):
            data = b"".join(bytes(b) for b in buffers)
            offered.append(len(data))
            return os.write(fd, data if cap is None else data[:cap])

        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            writev_all(fd, chunks, capped_writev, max_write)
        finally:
            os.close(fd)
        assert path.read_bytes() == expected
        assert max(offered) <= max_write
        assert offered[0] == min(max_write, len(expected))  # full offers, across chunks


def test_writev_all_rejects_no_progress(tmp_path):
    fd = os.open(tmp_path / "x", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as info:
            writev_all(fd, [b"abc", b"def"], lambda fd, buffers: 0)
        assert info.value.errno == errno.EIO
        writev_all(fd, [b"", b""], lambda fd, buffers: 0)  # nothing to write: no call
    finally:
        os.close(fd)


def test_write_many_writes_hashes_and_limits(tmp_path):
    store = Store(tmp_path)
    data = os.urandom(5000)
    name = make_name(data, T0)
    writer = store.open_writer(name, len(data))
    writer.write_many([data[:1], data[1:3000], b"", data[3000:]])
    assert writer.size == len(data)
    assert writer.commit() == "stored"
    assert (tmp_path / name.path).read_bytes() == data
    # more than announced: refused, and nothing stays behind
    other = make_name(data[:100], T0.replace(second=9))
    writer = store.open_writer(other, 100)
    with pytest.raises(WriteRejected) as info:
        writer.write_many([data[:60], data[60:101]])
    assert info.value.reason == "too_large"
    assert not (tmp_path / other.path).exists()
    assert not list(tmp_path.rglob(".segsync-*"))


def test_an_aborted_write_keeps_its_new_directory_while_another_write_may_use_it(tmp_path):
    """The directory a refused write made goes away with it, but not while another
    write is in progress: that one may have found the directory and be about to create
    its file in it (the race: found it, the abort removed it, the open fails)."""
    store = Store(tmp_path)
    data = b"segment"
    name = make_name(data, hours_ago(3))
    hour = tmp_path / name.hour_path
    first = store.open_writer(name)
    store.begin_write()  # a second write has found the hour directory
    first.abort()
    assert hour.is_dir()
    store.end_write()  # the last write ended: what the refused one made goes
    assert list(tmp_path.iterdir()) == []

    # a write that needs the directory keeps it; the refused write's is removed only
    # where empty
    first = store.open_writer(name)
    other = make_name(b"other", hours_ago(3).replace(second=30))
    second = store.open_writer(other)
    first.abort()
    second.write(b"other")
    assert second.commit() == "stored"
    assert (tmp_path / other.path).read_bytes() == b"other"
    assert [p.name for p in hour.iterdir()] == [other.filename]


def test_concurrent_writes_into_a_new_hour_never_lose_their_directory(tmp_path):
    """Threads writing into brand-new hour directories, half of them refused (wrong
    bytes): no write fails for a directory another write's abort removed, and nothing
    is left behind but the stored segments."""
    import threading

    store = Store(tmp_path)
    errors: list[BaseException] = []
    stored: list = []
    start = threading.Barrier(8)

    def work(k: int) -> None:
        start.wait()
        for i in range(40):
            try:
                data = f"{k}-{i}".encode()
                name = make_name(data, hours_ago(3 + i % 5).replace(minute=k, second=i))
                with store.open_writer(name) as writer:
                    writer.write(data if k % 2 else b"wrong")
                    writer.commit()
                    stored.append(name)
            except WriteRejected:
                pass
            except BaseException as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(stored) == 4 * 40  # the threads with odd k write the right bytes
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted(n.path for n in stored)
    hours = {p for p in tmp_path.rglob("*")
             if p.is_dir() and len(p.relative_to(tmp_path).parts) == 3}
    assert hours == {tmp_path / n.hour_path for n in stored}


def test_parents_to_sync_pure():
    root = Path("/archive")
    hour = root / "chan" / "source" / "2026-12-07T00"
    quality, channel = hour.parent, hour.parent.parent
    assert parents_to_sync(set(), hour, root) == []
    assert parents_to_sync({hour}, hour, root) == [(hour, quality)]
    assert parents_to_sync({hour, quality, channel}, hour, root) == [
        (hour, quality), (quality, channel), (channel, root)]  # deepest first
    assert parents_to_sync({channel}, hour, root) == [(channel, root)]
    # only the chain of the directory committed into: another new hour is its own
    assert parents_to_sync({quality / "2026-12-07T01"}, hour, root) == []
    assert parents_to_sync({root}, root, root) == []  # the root is never "made"
    assert parents_to_sync({Path("/elsewhere/x")}, Path("/elsewhere/x"), root) == []


def record_fsyncs(monkeypatch) -> list[tuple[str, Path]]:
    """Every fsync from now on, in order: ("file" | "dir", the path it was made on)."""
    calls: list[tuple[str, Path]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        calls.append(("dir" if path.is_dir() else "file", path))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_a_new_hour_directory_is_synced_after_the_segments_own_fsync(tmp_path, monkeypatch):
    """The first segment of an hour (here also of its channel and quality): the new
    directories' names are made durable before the segment is acknowledged, but after
    its own fsync, which already committed the mkdirs (one journal commit fewer on
    the push path, bench/cluster_bandwidth.py); only the parents of directories that
    were made are synced."""
    store = Store(tmp_path)
    calls = record_fsyncs(monkeypatch)
    name = make_name(b"first", T0)
    hour = tmp_path / name.hour_path
    assert write_segment(store, name, [b"first"]) == "stored"
    assert calls[0][0] == "file"  # nothing synced before the segment's own data
    assert calls[1:] == [("dir", hour.parent), ("dir", hour.parent.parent),
                         ("dir", tmp_path), ("dir", hour)]

    calls.clear()  # the next hour of the same pair: only its quality directory
    later = make_name(b"later", T0 + dt.timedelta(hours=1))
    assert write_segment(store, later, [b"later"]) == "stored"
    next_hour = tmp_path / later.hour_path
    assert [c for c in calls if c[0] == "dir"] == [("dir", next_hour.parent),
                                                  ("dir", next_hour)]

    calls.clear()  # and a segment in an hour that exists: its own directory only
    same = make_name(b"same", T0 + dt.timedelta(hours=1, seconds=2))
    assert write_segment(store, same, [b"same"]) == "stored"
    assert [c for c in calls if c[0] == "dir"] == [("dir", next_hour)]


def test_a_write_that_found_a_new_directory_syncs_it_if_it_commits_first(
        tmp_path, monkeypatch):
    """Two writes into a brand-new hour: the second found the directory the first
    made. Whichever commits first makes the directory's name durable before it is
    acknowledged; the other does not sync it again."""
    store = Store(tmp_path)
    calls = record_fsyncs(monkeypatch)
    first_name = make_name(b"a", T0)
    second_name = make_name(b"b", T0 + dt.timedelta(seconds=2))
    hour = tmp_path / first_name.hour_path
    first = store.open_writer(first_name)
    second = store.open_writer(second_name)
    assert first.made_dirs == [hour.parent.parent, hour.parent, hour]
    assert second.made_dirs == []
    assert calls == []  # nothing synced while the bytes come in
    second.write(b"b")
    assert second.commit() == "stored"
    assert [c for c in calls if c[0] == "dir"] == [
        ("dir", hour.parent), ("dir", hour.parent.parent), ("dir", tmp_path), ("dir", hour)]
    calls.clear()
    first.write(b"a")
    assert first.commit() == "stored"
    assert [c for c in calls if c[0] == "dir"] == [("dir", hour)]


def test_a_batch_commit_syncs_new_directories_and_leaves_the_hour_to_the_caller(
        tmp_path, monkeypatch):
    """commit(sync_dir=False) (a catch-up batch): the new directories' names are made
    durable by the commit; the hour directory (the rename) by `sync_dirs` later."""
    store = Store(tmp_path)
    calls = record_fsyncs(monkeypatch)
    name = make_name(b"batch", T0)
    hour = tmp_path / name.hour_path
    with store.open_writer(name) as writer:
        writer.write(b"batch")
        assert writer.commit(sync_dir=False) == "stored"
    assert [c for c in calls if c[0] == "dir"] == [
        ("dir", hour.parent), ("dir", hour.parent.parent), ("dir", tmp_path)]
    calls.clear()
    store.sync_dirs([hour])
    assert calls == [("dir", hour)]


def test_an_aborted_write_into_a_new_hour_leaves_nothing_to_sync(tmp_path, monkeypatch):
    """A refused write's new directories go away; a later write makes and syncs them
    again (nothing is remembered as synced that is not)."""
    store = Store(tmp_path)
    calls = record_fsyncs(monkeypatch)
    name = make_name(b"right", T0)
    hour = tmp_path / name.hour_path
    with pytest.raises(WriteRejected):
        with store.open_writer(name) as writer:
            writer.write(b"wrong")
            writer.commit()
    assert list(tmp_path.iterdir()) == []
    assert calls == []
    assert write_segment(store, name, [b"right"]) == "stored"
    assert [c for c in calls if c[0] == "dir"] == [
        ("dir", hour.parent), ("dir", hour.parent.parent), ("dir", tmp_path), ("dir", hour)]
