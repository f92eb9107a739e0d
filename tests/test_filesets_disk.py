"""The disk and index sides of chat and extras replication (agent/filesets): no
symlink followed, nothing replaced, nothing outside the root, digests in sync."""

from __future__ import annotations

import os

import pytest
import trio
from prometheus_client import CollectorRegistry

from agent.archive.filesets.index import FileSetIndex
from agent.archive.filesets.ingest import FileSetIngest, FileSetMetrics, Rejected
from agent.archive.filesets.local import LocalFileSets, classify_local
from agent.archive.filesets.tree import FileExists, RefusedPath, SafeTree
from protocol.filesets import sets as fs

import chat_standin as wub

HOUR = "2026-01-01T05"


def test_write_new_never_replaces_and_leaves_no_temp(tmp_path):
    tree = SafeTree(tmp_path)
    assert tree.write_new(["media", "a", "x.metadata.json"], [b"first"]) == 5
    with pytest.raises(FileExists):
        tree.write_new(["media", "a", "x.metadata.json"], [b"second copy"])
    assert (tmp_path / "media/a/x.metadata.json").read_bytes() == b"first"
    assert os.listdir(tmp_path / "media/a") == ["x.metadata.json"]


def test_symlinks_are_refused_for_reading_and_writing(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    root = tmp_path / "root"
    (root / "emotes").mkdir(parents=True)
    os.symlink(outside, root / "emotes" / "link")
    os.symlink(outside / "secret", root / "emotes" / "file")
    tree = SafeTree(root)
    with pytest.raises(RefusedPath):
        tree.write_new(["emotes", "link", "new"], [b"x"])
    with pytest.raises(RefusedPath):
        tree.open_read(["emotes", "link", "secret"])
    with pytest.raises(RefusedPath):
        tree.open_read(["emotes", "file"])
    assert sorted(os.listdir(outside)) == ["secret"]
    assert tree.scan_extras("emotes") == {}
    os.symlink(outside, root / "media")
    with pytest.raises(RefusedPath):
        tree.write_new(["media", "x"], [b"x"])
    assert tree.scan_extras("media") == {}


def test_scans_skip_temp_hidden_and_junk(tmp_path):
    tree = SafeTree(tmp_path)
    chat_dir = tmp_path / "desertbus" / "chat"
    batch = wub.write_batch(str(chat_dir), 1767243600, [wub.message("hi", 1767243600.5, "a")])
    (chat_dir / HOUR).mkdir(parents=True, exist_ok=True)
    (chat_dir / HOUR / "00:00-abc.json.1234.temp").write_bytes(b"x")
    (chat_dir / HOUR / ".segsync-1.tmp").write_bytes(b"x")
    (tmp_path / "emotes" / "1" / ".hidden").parent.mkdir(parents=True)
    (tmp_path / "emotes" / "1" / ".hidden").write_bytes(b"h")
    (tmp_path / "emotes" / "1" / "dark-1.0").write_bytes(b"png")
    (tmp_path / "emotes" / "1" / "dark-2.0.5f.temp").write_bytes(b"p")
    rel = os.path.relpath(batch, chat_dir)
    assert tree.scan_chat("desertbus") == {rel: os.path.getsize(batch)}
    assert tree.scan_extras("emotes") == {"1/dark-1.0": 3}
    assert tree.chat_channels() == ["desertbus"]


def test_classify_local_paths():
    extras = frozenset({"emotes"})
    name = "12:00-" + "A" * 43 + ".json"
    assert classify_local(f"desertbus/chat/{HOUR}/{name}", extras) == (
        "chat", "desertbus", f"{HOUR}/{name}")
    assert classify_local(f"desertbus/chat/{HOUR}/{name}.x.temp", extras) is None
    assert classify_local("emotes/1/dark-1.0", extras) == ("extras", "emotes", "1/dark-1.0")
    assert classify_local("emotes/1/.x", extras) is None
    assert classify_local("media/1/x", extras) is None
    assert classify_local(f"desertbus/source/{HOUR}/x.ts", extras) is None


def test_index_digests_paths_only_and_remembers_merged_batches():
    a, b = FileSetIndex(), FileSetIndex()
    a.add("extras", "media", "x.metadata.json", 10)
    b.add("extras", "media", "x.metadata.json", 12)  # other bytes under the same name
    first, last = HOUR, HOUR
    assert a.set_digests(first, last) == [("extras", "media", 1, b.set_digests(first, last)[0][3])]
    rel = f"{HOUR}/12:00-" + "A" * 43 + ".json"
    a.add("chat", "c", rel, 5)
    a.discard("chat", "c", rel)
    assert rel in a.vanished("chat", "c")
    assert a.counts() == {"chat_batches": 0, "chat_tombstones": 0, "extras_files": 1}
    entries, complete = a.entries("extras", "media", [fs.bucket_of("extras", "x.metadata.json")],
                                  "")
    assert entries == [("x.metadata.json", 10)] and complete


def test_entries_page_when_over_the_limit():
    index = FileSetIndex()
    for i in range(100):
        index.add("extras", "e", f"f{i:03d}", 1)
    buckets = list(index.sets[("extras", "e")].buckets)
    got, after = [], ""
    while True:
        page, complete = index.entries("extras", "e", buckets, after, max_entries=7)
        got += page
        if complete:
            break
        after = page[-1][0]
    assert [r for r, _ in got] == [f"f{i:03d}" for i in range(100)]


async def _chunks(*parts):
    for p in parts:
        yield p


def make(tmp_path, extras=("emotes", "media")):
    tree = SafeTree(tmp_path)
    index = FileSetIndex()
    metrics = FileSetMetrics(CollectorRegistry())
    ingest = FileSetIngest(tree, index, metrics)
    announced = []
    local = LocalFileSets(tree, index, ingest, metrics, extras,
                          announce=lambda *a: announced.append(a))
    return tree, index, ingest, local, announced


async def test_ingest_verifies_chat_hash_and_extras_size_and_hash(tmp_path):
    import hashlib
    tree, index, ingest, _, _ = make(tmp_path)
    data = (wub.format_batch([wub.message("x", 1767243600.0, "a")]) + "\n").encode()
    import base64
    h = base64.b64encode(hashlib.sha256(data).digest(), b"-_").decode().rstrip("=")
    rel = f"{HOUR}/00:00-{h}.json"
    with pytest.raises(Rejected):
        await ingest.accept("chat", "db", rel, None, None, _chunks(data + b"x"), "t")
    assert await ingest.accept("chat", "db", rel, None, None, _chunks(data), "t") == "stored"
    assert (tmp_path / "db" / "chat" / rel).read_bytes() == data
    assert await ingest.accept("chat", "db", rel, None, None, _chunks(data), "t") == "have"
    with pytest.raises(Rejected) as info:
        await ingest.accept("extras", "emotes", "1/a", 4, None, _chunks(b"abc"), "t")
    assert info.value.reason == "size_mismatch"
    with pytest.raises(Rejected) as info:
        await ingest.accept("extras", "emotes", "1/a", 3, b"\0" * 32, _chunks(b"abc"), "t")
    assert info.value.reason == "hash_mismatch"
    big = os.urandom(3 * 1024 * 1024)
    sha = hashlib.sha256(big).digest()
    assert await ingest.accept("extras", "media", "v/big.mp4", len(big), sha,
                               _chunks(big[:2**20], big[2**20:2**21], big[2**21:]), "t") == "stored"
    assert (tmp_path / "media/v/big.mp4").read_bytes() == big
    assert [n for n in os.listdir(tmp_path / "media/v")] == ["big.mp4"]
    # a tombstone refuses its batch from then on
    assert await ingest.accept_tombstone("db", rel[:-5] + ".tombstone", "t") == "stored"
    assert ingest.offer_status("chat", "db", rel) == "have"


async def test_local_rescan_announces_new_and_forgets_merged(tmp_path):
    tree, index, ingest, local, announced = make(tmp_path)
    path = str(tmp_path / "desertbus" / "chat")
    said = [(1767243600.2, "a", "i1")]
    wub.write_minutes(path, wub.received(said, "a", 0))
    wub.write_minutes(path, wub.received(said, "b", 0.3))
    (tmp_path / "emotes" / "5").mkdir(parents=True)
    (tmp_path / "emotes" / "5" / "dark-1.0").write_bytes(b"e")
    assert await local.rescan(announce_new=True) == 3
    assert sorted(a[0] for a in announced) == ["chat", "chat", "extras"]
    wub.merge_once(path)
    await local.rescan(announce_new=True)
    assert index.counts()["chat_batches"] == 1
    assert len(index.vanished("chat", "desertbus")) == 2
