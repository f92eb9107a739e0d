"""The persistent index (ROOT/.segsync/index.sqlite3), in process: warm starts after
each kind of offline change, racy listings, damaged files, a .segsync/ that cannot
hold an index, and names in memory only for hot hours.

The file-system clock is a parameter (`fs_clock`): tests move it past the racy
margin instead of waiting two seconds for directory stamps to age.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import sqlite3
import time
import zlib
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.archive.index import ArchiveIndex
from agent.archive.index_keeper import IndexKeeper, list_hour_dir
from agent.archive.store import Store, classify_hour
from helpers import hours_ago, make_name, touch_tombstone, write_segment_file
from protocol.index.listing_stamp import RACY_MARGIN_NS
from protocol.names import Kind

LATER = 100 * 10**9  # the fs clock, well past every stamp: no listing is racy


def ahead() -> int:
    return time.time_ns() + LATER


def make_archive(root: Path, hours=(30, 31, 32, 33, 34, 35), per_hour: int = 5,
                 qualities=("source", "480p")) -> list:
    names = []
    for h in hours:
        start = hours_ago(h)
        for q in qualities:
            for i in range(per_hour):
                data = f"{h}-{q}-{i}".encode()
                name = make_name(data, start + dt.timedelta(seconds=2 * i), quality=q)
                write_segment_file(root, name, data)
                names.append((name, data))
    return names


def keeper(root: Path, fs_clock=ahead, registry=None, **kw) -> IndexKeeper:
    return IndexKeeper(Store(root), ArchiveIndex(), registry or CollectorRegistry(),
                       fs_clock=fs_clock, **kw)


def disk_state(root: Path) -> dict:
    store = Store(root)
    out = {}
    for c, q, h, raw in store.scan():
        listing = classify_hour(c, q, h, raw)
        names = listing.segments + listing.hidden + listing.tombstones
        if names:
            out[(c, q, h)] = sorted(names)
    return out


def index_state(index: ArchiveIndex) -> dict:
    return {(c, q, h): sorted(index.names(c, q, h))
            for c, q in index.pairs() for h in index.hours(c, q)}


async def started(root: Path, **kw) -> IndexKeeper:
    k = keeper(root, **kw)
    await k.start()
    return k


async def stopped(k: IndexKeeper) -> None:
    await k.flush()
    k.db.checkpoint()
    k.db.close()


async def test_cold_then_warm_start_lists_nothing_unchanged(tmp_path):
    make_archive(tmp_path)
    k = await started(tmp_path)
    assert k.start_report.kind.startswith("full scan (no index yet)")
    assert index_state(k.index) == disk_state(tmp_path)
    await stopped(k)

    k2 = await started(tmp_path)
    assert k2.start_report.kind == "warm"
    assert k2.start_report.listed == 0 and k2.start_report.trusted == 12
    assert k2.index.cold_loads == 0
    assert k2.index.hot_hours() == 0  # none of these hours is current or previous
    # digests and counts came from the file: an in-sync round loads no names
    first, last = "2000-01-01T00", "2100-01-01T00"
    assert k2.index.pair_digests(first, last) == k.index.pair_digests(first, last)
    for c, q in k.index.pairs():
        assert k2.index.hour_digests(c, q, first, last) == k.index.hour_digests(c, q, first, last)
    assert k2.index.segment_count() == 60
    assert k2.index.cold_loads == 0
    assert index_state(k2.index) == disk_state(tmp_path)  # every hour loaded on demand
    assert k2.index.cold_loads == 12
    await stopped(k2)


async def test_warm_start_reflects_every_kind_of_offline_change(tmp_path):
    names = make_archive(tmp_path)
    k = await started(tmp_path)
    await stopped(k)
    # while the agent is down: a segment added to an old hour, one deleted, one
    # tombstoned, a whole hour directory removed, a new hour, a tombstone alone
    added = make_name(b"late", hours_ago(33) + dt.timedelta(seconds=41))
    write_segment_file(tmp_path, added, b"late")
    (tmp_path / names[7][0].path).unlink()
    touch_tombstone(tmp_path, names[12][0])
    shutil.rmtree(tmp_path / names[25][0].hour_path)
    write_segment_file(tmp_path, make_name(b"new", hours_ago(50)), b"new")
    touch_tombstone(tmp_path, make_name(b"gone-before", hours_ago(30), quality="480p"))
    # the mtime of a changed directory restored (rsync -a, touch -d): ctime tells
    hour_dir = tmp_path / names[40][0].hour_path
    st = os.stat(hour_dir)
    write_segment_file(tmp_path, make_name(b"restored", names[40][0].start
                                           + dt.timedelta(seconds=1)), b"restored")
    os.utime(hour_dir, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(hour_dir).st_mtime_ns == st.st_mtime_ns

    k2 = await started(tmp_path)
    assert k2.start_report.kind == "warm"
    assert k2.start_report.gone == 1
    assert 0 < k2.start_report.listed < 12
    assert index_state(k2.index) == disk_state(tmp_path)
    assert k2.index.has(added, Kind.SEGMENT) and not k2.index.has(names[7][0], Kind.SEGMENT)
    assert k2.index.has(names[12][0], Kind.TOMBSTONE)
    assert names[12][0].filename not in k2.index.visible_segments(
        names[12][0].channel, names[12][0].quality, names[12][0].hour)
    await stopped(k2)
    # and what this start saved is right for the next one
    k3 = await started(tmp_path)
    assert k3.start_report.listed == 0
    assert index_state(k3.index) == disk_state(tmp_path)
    await stopped(k3)


def forge_row(root: Path, key, **columns) -> None:
    """Set columns of an hour's row (`names`, `names_crc`: of its names' row)."""
    conn = sqlite3.connect(root / ".segsync" / "index.sqlite3")
    with conn:
        for table, cols in (("hours", {c: v for c, v in columns.items()
                                       if not c.startswith("names")}),
                            ("hour_names", {c: v for c, v in columns.items()
                                            if c.startswith("names")})):
            if cols:
                sets = ", ".join(f"{c}=?" for c in cols)
                conn.execute(f"UPDATE {table} SET {sets} WHERE channel=? AND quality=? AND "
                             "hour=?", (*cols.values(), *key))
    conn.close()


@pytest.mark.parametrize("racy", [True, False])
async def test_a_racily_clean_listing_is_listed_again(tmp_path, racy):
    """A file added in the same timestamp tick as the listing, just after it, leaves
    the directory's stamp as the listing saw it. Forged here: the saved row lacks a
    file the directory holds, with the directory's current stamp; listed in the same
    tick (racy) it must be listed again, listed well before (not racy) it stands,
    which shows that the stamps, not a re-listing of everything, decide."""
    from protocol.index.schema import encode_names
    names = make_archive(tmp_path, hours=(30, 31), qualities=("source",))
    k = await started(tmp_path)
    await stopped(k)
    name = names[0][0]
    key = (name.channel, name.quality, name.hour)
    st = os.stat(tmp_path / name.hour_path)
    missing = name.filename
    kept = [n for n in disk_state(tmp_path)[key] if n != missing]
    listed_at = max(st.st_mtime_ns, st.st_ctime_ns) + (0 if racy else RACY_MARGIN_NS + 1)
    blob = encode_names(kept)
    forge_row(tmp_path, key, names=blob, names_crc=zlib.crc32(blob), mtime_ns=st.st_mtime_ns,
              ctime_ns=st.st_ctime_ns, listed_at_ns=listed_at)
    k2 = await started(tmp_path)
    assert k2.index.has(name, Kind.SEGMENT) is racy
    assert (index_state(k2.index) == disk_state(tmp_path)) is racy
    assert k2.start_report.listed == (1 if racy else 0)
    await stopped(k2)


async def test_changes_at_run_time_are_saved_checked_against_the_directory(tmp_path):
    names = make_archive(tmp_path, hours=(30, 31), qualities=("source",))
    k = await started(tmp_path)
    late = make_name(b"late", hours_ago(30) + dt.timedelta(seconds=31))
    write_segment_file(tmp_path, late, b"late")
    k.index.add(late, Kind.SEGMENT)  # as the watcher would
    k.index.discard(names[-1][0], Kind.SEGMENT)  # not done on disk: must not be trusted
    assert await k.flush() == 2
    e = k.index.entry((late.channel, late.quality, late.hour))
    assert e.listing is not None and not e.unsaved  # equal to the directory: checked
    e0 = k.index.entry((names[-1][0].channel, "source", names[-1][0].hour))
    assert e0.listing is None and not e0.unsaved  # saved, unchecked
    await stopped(k)
    k2 = await started(tmp_path)
    assert k2.start_report.listed == 1  # the unchecked hour
    assert index_state(k2.index) == disk_state(tmp_path)
    await stopped(k2)


async def test_names_in_memory_only_for_hot_hours(tmp_path):
    now = dt.datetime.now(dt.timezone.utc)
    make_archive(tmp_path, hours=range(2, 22), per_hour=3, qualities=("source",))
    write_segment_file(tmp_path, make_name(b"now", now.replace(second=0, microsecond=0)),
                       b"now")
    k = await started(tmp_path, max_hot_hours=3)
    # the full scan kept the names of the current hour only
    assert k.index.hot_hours() == 1
    for hour in k.index.hours("desertbus", "source")[:8]:
        k.index.names("desertbus", "source", hour)
    assert k.index.cold_loads == 8 and k.index.hot_hours() == 9
    k.index.evict(now)
    assert k.index.hot_hours() == 1 + 3  # the current hour and the 3 most recent
    # a listing of a cold hour: the same names as on disk
    hour = k.index.hours("desertbus", "source")[-1]
    assert sorted(k.index.names("desertbus", "source", hour)) == \
        disk_state(tmp_path)[("desertbus", "source", hour)]
    await stopped(k)


async def test_a_names_blob_that_fails_its_crc_is_not_used(tmp_path, caplog):
    """SQLite checks no page: a flipped byte inside a names blob is caught by the
    row's CRC, and the hour's names come from its directory instead."""
    make_archive(tmp_path, hours=(30, 31), qualities=("source",))
    k = await started(tmp_path)
    await stopped(k)
    key = next(iter(disk_state(tmp_path)))
    conn = sqlite3.connect(tmp_path / ".segsync" / "index.sqlite3")
    with conn:
        (blob,) = conn.execute("SELECT names FROM hour_names WHERE channel=? AND quality=? AND "
                               "hour=?", key).fetchone()
        rotten = blob[:5] + bytes([blob[5] ^ 0x01]) + blob[6:]  # one bit
        conn.execute("UPDATE hour_names SET names=? WHERE channel=? AND quality=? AND hour=?",
                     (rotten, *key))
    conn.close()
    k2 = await started(tmp_path)
    assert k2.start_report.kind == "warm"
    assert index_state(k2.index) == disk_state(tmp_path)
    assert "do not match their checksum" in caplog.text
    await stopped(k2)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "version", "foreign"])
async def test_a_damaged_or_foreign_index_is_rebuilt(tmp_path, damage, caplog):
    make_archive(tmp_path, per_hour=40)
    k = await started(tmp_path)
    await stopped(k)
    path = tmp_path / ".segsync" / "index.sqlite3"
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00junk" * 40 + data[200:])
    elif damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "version":
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA user_version=99")
        conn.close()
    else:
        path.unlink()
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE hours (x)")
        conn.close()
    caplog.set_level(logging.INFO)
    k2 = await started(tmp_path)
    # never trusted: whatever part of it survived, the index equals the disk
    assert index_state(k2.index) == disk_state(tmp_path)
    if damage != "truncated":  # a cut file may still open: its rows fail when read
        assert k2.start_report.kind.startswith("full scan")
        assert "rebuilding it by a full scan" in caplog.text
    await stopped(k2)
    k3 = await started(tmp_path)  # rebuilt: warm again
    assert k3.start_report.kind == "warm"
    assert index_state(k3.index) == disk_state(tmp_path)
    await stopped(k3)


async def test_segsync_dir_that_cannot_hold_an_index_means_in_memory(tmp_path, caplog):
    make_archive(tmp_path, hours=(30, 31))
    (tmp_path / ".segsync").write_bytes(b"not a directory")
    caplog.set_level(logging.WARNING)
    k = await started(tmp_path, max_hot_hours=0)
    assert "running with an in-memory index" in caplog.text
    status = k.status()
    assert status.persistent is False and ".segsync" in status.problem
    assert index_state(k.index) == disk_state(tmp_path)
    k.index.evict(dt.datetime.now(dt.timezone.utc))
    assert k.index.hot_hours() == 4  # nothing is evicted: there is nowhere to load from
    assert await k.flush() == 0


async def test_a_full_disk_keeps_changes_in_memory_until_saves_work_again(tmp_path, caplog):
    names = make_archive(tmp_path, hours=(30, 31), per_hour=200)
    k = await started(tmp_path, max_hot_hours=0)
    conn = k.db._writer
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")  # SQLITE_FULL from here on
    caplog.set_level(logging.WARNING)
    extra = []
    for i in range(300):  # enough new names for a bigger row
        n = make_name(f"x{i}".encode(), hours_ago(30) + dt.timedelta(milliseconds=7 * i + 1))
        write_segment_file(tmp_path, n, f"x{i}".encode())
        k.index.add(n, Kind.SEGMENT)
        extra.append(n)
    assert await k.flush() == 0
    assert "cannot save" in caplog.text and k.status().persistent is False
    assert "full" in k.status().problem
    k.index.evict(dt.datetime.now(dt.timezone.utc))
    key = (extra[0].channel, extra[0].quality, extra[0].hour)
    assert k.index.entry(key).hot  # unsaved: never evicted
    assert index_state(k.index) == disk_state(tmp_path)
    conn.execute("PRAGMA max_page_count=1073741823")
    assert await k.flush() == 1
    assert k.status().persistent is True
    await stopped(k)
    k2 = await started(tmp_path)
    assert index_state(k2.index) == disk_state(tmp_path)
    del names
    await stopped(k2)


async def test_sweep_lists_only_changed_directories(tmp_path):
    names = make_archive(tmp_path, hours=(30, 31, 32))
    k = await started(tmp_path)
    await k.flush()
    listed, gone = await k.sweep()
    assert listed == {} and gone == []
    add = make_name(b"swept", hours_ago(31) + dt.timedelta(seconds=51))
    write_segment_file(tmp_path, add, b"swept")
    shutil.rmtree(tmp_path / names[0][0].hour_path)
    listed, gone = await k.sweep()
    assert list(listed) == [(add.channel, add.quality, add.hour)]
    assert add.filename in listed[(add.channel, add.quality, add.hour)]
    assert gone == [(names[0][0].channel, names[0][0].quality, names[0][0].hour)]
    await stopped(k)


def test_list_hour_dir_marks_our_temp_files(tmp_path):
    name = make_name(b"a", hours_ago(30))
    write_segment_file(tmp_path, name, b"a")
    (tmp_path / name.hour_path / ".segsync-0123.tmp").write_bytes(b"junk")
    key = (name.channel, name.quality, name.hour)
    lst = list_hour_dir(Store(tmp_path), key)
    assert lst.had_temp and lst.names == [name.filename]
    lst = list_hour_dir(Store(tmp_path), key, remove_temp=True)
    assert not lst.had_temp and not (tmp_path / name.hour_path / ".segsync-0123.tmp").exists()
    assert list_hour_dir(Store(tmp_path), ("desertbus", "source", "2001-01-01T00")) is None


async def test_an_in_sync_round_over_the_whole_range_loads_no_hour_names(tmp_path):
    """Two agents holding the same archive: a backfill round compares digests only, so
    neither loads a cold hour's names; an hour that differs is listed (and loaded)."""
    from conftest import running_cluster, wait_until
    make_archive(tmp_path / "node0", hours=range(3, 40), per_hour=3)
    shutil.copytree(tmp_path / "node0", tmp_path / "node1")
    async with running_cluster(tmp_path, 2, push=False, backfill=False, scrub=False,
                               max_hot_hours=2) as c:
        a, b = c.nodes
        assert a.index.hot_hours() == b.index.hot_hours() == 0
        results = await b.backfiller.round_all(list(b.peers.peers))
        assert results[0].ok and results[0].pairs_compared == 2
        assert results[0].total("hours_listed") == 0
        assert a.index.cold_loads == b.index.cold_loads == 0
        assert a.index.hot_hours() == b.index.hot_hours() == 0
        # one hour differs: only that hour is listed, on both sides
        extra = make_name(b"only-a", hours_ago(20) + dt.timedelta(seconds=11))
        write_segment_file(c.root(0), extra, b"only-a")
        await wait_until(lambda: a.index.has(extra, Kind.SEGMENT))
        loads_a = a.index.cold_loads
        results = await b.backfiller.round_all(list(b.peers.peers))
        assert results[0].total("hours_listed") == 1
        assert b.index.has(extra, Kind.SEGMENT)
        assert a.index.cold_loads == loads_a  # its hour was hot already (just written)
        assert b.index.cold_loads == 1


async def test_coverage_spans_are_saved_and_a_warm_start_parses_no_name(tmp_path):
    from agent.serve.coverage_maps import local_maps, warm_spans
    make_archive(tmp_path, hours=(3, 4, 5))
    now = dt.datetime.now(dt.timezone.utc)
    k = await started(tmp_path)
    await warm_spans(k.index, now, 24)  # the dashboard's warm-up: cold hours in a thread
    maps = [m.as_json() for m in local_maps(k.index, now, 24)]
    assert maps and k.index.cold_loads == 0  # read for the spans, not kept
    await stopped(k)
    k2 = await started(tmp_path)
    assert all(e.cached_spans() is not None for _, e in k2.index.items())
    assert [m.as_json() for m in local_maps(k2.index, now, 24)] == maps
    assert k2.index.cold_loads == 0
    await stopped(k2)


async def test_status_and_metrics_describe_the_index(tmp_path):
    from prometheus_client import generate_latest

    from agent.commands.status_view import index_line
    from protocol import messages as m
    make_archive(tmp_path, hours=(30, 31))
    k = await started(tmp_path)
    await stopped(k)
    registry = CollectorRegistry()
    k2 = await started(tmp_path, registry=registry)
    k2.index.names("desertbus", "source", k2.index.hours("desertbus", "source")[0])
    status = k2.status()
    assert status.persistent and status.hours == 4 and status.hot_hours == 1
    assert status.cold_loads == 1 and status.bytes > 0 and status.start == "warm"
    assert [p for p, _ in status.start_phases] == ["open", "walk", "list", "install"]
    again = m.IndexStatus.from_obj(json.loads(json.dumps(status.to_obj())))  # as sent
    assert again == status
    line = index_line(status)
    assert line.startswith("index: saved (") and "4 hours, 1 hot, 1 cold loads" in line
    assert "last start warm (open" in line
    text = generate_latest(registry).decode()
    assert "segsync_index_cold_loads_total 1.0" in text
    assert 'segsync_index_start_phase_seconds{phase="walk"}' in text
    assert "segsync_index_persistent 1.0" in text
    await stopped(k2)


async def test_changes_made_before_the_watches_are_set_are_found(tmp_path):
    """A node sets its watches beside the index's start (thousands of hour directories
    take a while): a change made after the hour directories were stat'ed and before
    the watches are in place is found by the sweep that ends the start-up."""
    import trio

    from agent.node import Node
    from conftest import node_config
    root = tmp_path / "node0"
    names = make_archive(root, hours=(30, 31, 32))
    k = await started(root)
    await stopped(k)  # a saved index: the node starts warm
    (root / "emotes").mkdir()
    (root / "emotes" / "before.png").write_bytes(b"before")
    node = Node(node_config(root, push=False, backfill=False, scrub=False,
                            extras=["emotes"]))
    real_run = node.watcher.run
    added = make_name(b"in the gap", hours_ago(31) + dt.timedelta(seconds=41))
    removed = names[0][0]

    async def late_watches(handle_batch, task_status=trio.TASK_STATUS_IGNORED):
        assert node.url is not None  # serving: the index has started, the extras scanned
        assert node.index_keeper.start_report.kind == "warm"
        assert node.files.index.has("extras", "emotes", "before.png")
        write_segment_file(root, added, b"in the gap")
        (root / removed.path).unlink()
        touch_tombstone(root, names[1][0])
        (root / "emotes" / "gap.png").write_bytes(b"in the gap")
        await real_run(handle_batch, task_status=task_status)

    node.watcher.run = late_watches
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert node.index.has(added, Kind.SEGMENT)
        assert not node.index.has(removed, Kind.SEGMENT)
        assert node.index.has(names[1][0], Kind.TOMBSTONE)
        assert index_state(node.index) == disk_state(root)
        assert node.files.index.has("extras", "emotes", "gap.png")
        node.stop()


async def test_a_sweep_keeps_an_unchanged_cold_hour_cold_and_saves_its_new_stamp(tmp_path):
    """A directory whose stamp moved with the same names (a temp file come and gone):
    the sweep compares it without loading it into memory, and the next save records
    its new stamp, so the next start trusts it again."""
    import trio

    from agent.archive.index_keeper import dir_stamp
    from agent.node import Node
    from conftest import node_config
    root = tmp_path / "node0"
    names = make_archive(root, hours=(30, 31, 32))
    k = await started(root)
    await stopped(k)
    node = Node(node_config(root, push=False, backfill=False, scrub=False))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        node.index_keeper.fs_clock = ahead
        name = names[0][0]
        key = (name.channel, name.quality, name.hour)
        assert not node.index.entry(key).hot
        temp = root / name.hour_path / ".segsync-0123.tmp"
        temp.write_bytes(b"junk")
        temp.unlink()
        moved = dir_stamp(root / name.hour_path)
        assert moved != node.index.entry(key).listing.stamp
        assert await node.local_files.sweep() == 0
        assert not node.index.entry(key).hot and node.index.entry(key).unsaved
        assert await node.index_keeper.flush() >= 1
        entry = node.index.entry(key)
        assert not entry.hot and not entry.unsaved and entry.listing.stamp == moved
        node.stop()
    k2 = await started(root)
    assert k2.start_report.listed == 0  # every hour as saved, the moved one too
    assert index_state(k2.index) == disk_state(root)
    await stopped(k2)
