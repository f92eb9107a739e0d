"""Pure rules of chat batches and extras files (protocol/filesets/: chat, extras,
sets, batch): names, hostile paths, plans, batch replies."""

from __future__ import annotations

import base64
import hashlib

import pytest

from protocol.filesets import batch as filebatch, chat, extras, sets as fs
from protocol import messages as m
from protocol.errors import FileNameError, ProtocolError

HOUR = "2026-01-01T05"
DATA = b'{"command":"PRIVMSG","time":1.0,"time_range":0}\n'


def batch_file(data: bytes = DATA, time: str = "12:00") -> str:
    # wubloader's write_batch: unpadded url-safe base64 of the SHA-256 of the bytes
    h = base64.b64encode(hashlib.sha256(data).digest(), b"-_").decode().rstrip("=")
    return f"{time}-{h}.json"


# ---- chat names ----

def test_batch_name_round_trips_and_matches_its_bytes():
    name = chat.parse_chat_filename("desertbus", HOUR, batch_file())
    assert name.filename == batch_file()
    assert name.rel == f"{HOUR}/{batch_file()}"
    assert name.path == f"desertbus/chat/{HOUR}/{batch_file()}"
    assert chat.matches_name(name, DATA) and not chat.matches_name(name, DATA + b"x")
    assert chat.batch_name_for("desertbus", HOUR, "12:00", DATA) == name
    tomb = name.as_tombstone
    assert tomb.filename.endswith(".tombstone") and tomb.batch == name
    assert chat.parse_chat_rel("desertbus", tomb.rel) == tomb


@pytest.mark.parametrize("filename", [
    batch_file() + ".0123.temp", "." + batch_file(), "12:00-abc.json", "60:00-" + "A" * 43 + ".json",
    "12:61-" + "A" * 43 + ".json", "12:00-" + "A" * 42 + "B.json",  # not canonical base64
    "12:00.000000-2.0-full-" + "A" * 43 + ".ts", "x.json", "", "../" + batch_file(),
])
def test_other_chat_file_names_are_refused(filename):
    with pytest.raises(FileNameError):
        chat.parse_chat_filename("desertbus", HOUR, filename)


@pytest.mark.parametrize("rel", [f"../{HOUR}/{batch_file()}", f"/{HOUR}/{batch_file()}",
                                 batch_file(), f"x/{HOUR}/{batch_file()}",
                                 f"{HOUR}\\{batch_file()}", f"notanhour/{batch_file()}"])
def test_chat_rel_paths_have_exactly_hour_and_file(rel):
    with pytest.raises(FileNameError):
        chat.parse_chat_rel("desertbus", rel)


def test_archiver_temp_names():
    assert chat.is_archiver_temp(batch_file() + ".6f1c.temp")
    assert not chat.is_archiver_temp(batch_file())


# ---- extras paths ----

@pytest.mark.parametrize("rel", ["123/dark-1.0", "a", "x/y/z.metadata.json", "ü/ñ.png",
                                 "a..b/c", "a/b..", "...x"])
def test_plain_extras_paths_are_ok(rel):
    # "...x" is a hidden name, not a parent reference: checked, then ignored
    assert extras.check_extras_path(rel) == rel


@pytest.mark.parametrize("rel, why", [
    ("../etc/passwd", "'..'"), ("a/../../b", "'..'"), ("..", "'..'"), ("/etc/passwd", "absolute"),
    ("a\\b", "backslash"), ("a\x00b", "NUL"), ("a//b", "empty"), ("a/", "empty"), ("", "empty"),
    ("./a", "'.'"), ("a/\x01", "control"), ("x" * 1001, "longer"), ("a/" + "b" * 256, "over"),
    ("/".join("a" * 33), "deeper"), (5, "string"), ("\udc80", "Unicode"),
])
def test_hostile_extras_paths_are_refused_with_a_reason(rel, why):
    with pytest.raises(FileNameError) as info:
        extras.check_extras_path(rel)
    assert why in str(info.value)


@pytest.mark.parametrize("rel, verdict", [
    ("a/b", "ok"), (".hidden", "ignored"), ("a/.git/x", "ignored"),
    ("x.png.4d2e.temp", "ignored"), (".3f2a9c.temp", "ignored"), ("../x", "refused"),
])
def test_extras_classification(rel, verdict):
    assert extras.classify_extras_path(rel)[0] == verdict


@pytest.mark.parametrize("name", ["emotes", "media"])
def test_extras_dirs(name):
    assert extras.validate_extras_dir(name) == name


@pytest.mark.parametrize("name", ["", ".segsync", "a/b", "..", "chat", "a\\b"])
def test_bad_extras_dirs(name):
    with pytest.raises(FileNameError):
        extras.validate_extras_dir(name)


def test_extras_buckets_are_stable_and_spread():
    assert extras.extras_bucket("a/b") == hashlib.sha256(b"a/b").hexdigest()[:2]
    buckets = {extras.extras_bucket(f"{i}/dark-1.0") for i in range(5000)}
    assert len(buckets) == extras.BUCKETS


# ---- sets, digests, plans ----

def test_chat_tombstone_hides_its_batch_from_the_listing():
    b = f"{HOUR}/{batch_file()}"
    t = b[:-5] + ".tombstone"
    other = f"{HOUR}/{batch_file(b'x')}"
    assert fs.visible("chat", [b, t, other]) == sorted([t, other])
    assert fs.visible("extras", ["b", "a"]) == ["a", "b"]
    assert fs.bucket_of("chat", b) == HOUR
    assert len(fs.bucket_of("extras", "a/b")) == 2


def test_digests_cover_paths_only():
    assert fs.bucket_digest(["a", "b"]) == fs.bucket_digest(["b", "a"])
    assert fs.bucket_digest(["a"]) != fs.bucket_digest(["a", "b"])
    assert fs.set_digest([("00", b"x" * 32)]) != fs.set_digest([("01", b"x" * 32)])


def test_chat_buckets_follow_the_hour_range_extras_do_not():
    assert fs.bucket_in_range("chat", HOUR, HOUR, HOUR)
    assert not fs.bucket_in_range("chat", "2025-01-01T00", HOUR, HOUR)
    assert fs.bucket_in_range("extras", "ff", HOUR, HOUR)


def test_plan_chat_fetches_missing_takes_tombstones_skips_vanished_and_hidden():
    have = f"{HOUR}/{batch_file(b'have')}"
    new = f"{HOUR}/{batch_file(b'new')}"
    merged = f"{HOUR}/{batch_file(b'merged')}"
    hidden = f"{HOUR}/{batch_file(b'hidden')}"
    their_tomb = f"{HOUR}/{batch_file(b'gone')}"[:-5] + ".tombstone"
    local = {have, hidden[:-5] + ".tombstone"}
    remote = [(have, 1), (new, 2), (merged, 3), (hidden, 4), (their_tomb, 0),
              (f"{HOUR}/{batch_file()}.abcd.temp", 5), (f"../{HOUR}/x.json", 1),
              (f"{HOUR}/../../etc/x.json", 1)]
    plan = fs.plan_entries("chat", "desertbus", remote, local, vanished={merged})
    assert plan.fetch == [(new, 2)]
    assert plan.tombstones == [their_tomb]
    assert plan.skipped_vanished == 1 and plan.skipped_tombstoned == 1
    assert plan.ignored == 1
    assert [p for p, _ in plan.refused] == [f"../{HOUR}/x.json", f"{HOUR}/../../etc/x.json"]


def test_plan_extras_refuses_hostile_ignores_temp_and_never_replaces():
    remote = [("a/b", 3), ("held", 99), ("../../etc/passwd", 1), ("/abs", 1), ("a\\b", 1),
              (".hidden", 1), ("m/.x.temp", 1), ("m/x.png.temp", 1), ("big", 10**12),
              ("legacy", None)]
    plan = fs.plan_entries("extras", "media", remote, {"held": None})
    assert sorted(plan.fetch) == [("a/b", 3), ("legacy", None)]
    assert {p for p, _ in plan.refused} == {"../../etc/passwd", "/abs", "a\\b"}
    assert all(why for _, why in plan.refused)
    assert plan.ignored == 3 and plan.too_large == 1


def test_group_buckets_bounds_each_request():
    counts = {f"{i:02x}": 300 for i in range(256)}
    groups = fs.group_buckets(counts, max_entries=1000)
    assert sum(len(g) for g in groups) == 256
    assert all(sum(counts[b] for b in g) <= 1000 for g in groups)
    assert fs.group_buckets({"big": 10**6, "small": 1}, max_entries=1000) == [["small"], ["big"]]


def test_set_keys_are_validated():
    assert fs.check_set("chat", "desertbus") == ("chat", "desertbus")
    for kind, key in [("video", "x"), ("chat", "../x"), ("extras", ".segsync"), ("extras", "a/b")]:
        with pytest.raises(FileNameError):
            fs.check_set(kind, key)


def test_entries_with_a_hostile_path_do_not_decode():
    for rel in ("../x", "/etc/passwd", "a\\b", ".hidden", "x.temp"):
        data = m.encode(m.Entries("extras", "emotes", [("ok", 1), (rel, 1)], True))
        with pytest.raises(ProtocolError):
            m.decode(data, m.Entries, 10**6)
    data = m.encode(m.Entries("chat", "desertbus", [(batch_file(), 1)], True))  # no hour
    with pytest.raises(ProtocolError):
        m.decode(data, m.Entries, 10**6)


def test_legacy_extras_listing_decoding():
    assert fs.decode_legacy_extras(b'["a/b", "c"]') == ["a/b", "c"]
    for bad in (b"<html>", b'{"a": 1}', b"[1]", b"\xff"):
        with pytest.raises(ProtocolError):
            fs.decode_legacy_extras(bad)


# ---- file batches ----

def test_file_batch_round_trip_and_checks():
    body = (filebatch.item_frame("a", b"abc") + filebatch.frame(m.FileMissing("b", "not_found"))
            + filebatch.item_frame("c", b""))
    items = filebatch.parse_batch(body, ["a", "b", "c"])
    assert [(i.path, i.data, i.reason) for i in items] == [
        ("a", b"abc", None), ("b", None, "not_found"), ("c", b"", None)]
    with pytest.raises(ProtocolError):
        filebatch.parse_batch(body, ["a", "c", "b"])  # out of order
    with pytest.raises(ProtocolError):
        filebatch.parse_batch(body + b"x", ["a", "b", "c"])  # trailing bytes
    with pytest.raises(ProtocolError):
        filebatch.parse_batch(body[:-3], ["a", "b", "c"])
    lying = filebatch.frame(m.FileItem("a", 3, hashlib.sha256(b"xyz").digest()), b"abc")
    assert filebatch.parse_batch(lying, ["a"])[0].reason == "hash_mismatch"


def test_fetch_batches_split_small_and_large():
    wanted = [(f"f{i}", 10) for i in range(600)] + [("big", 5 * 2**20), ("unknown", None)]
    batches, singles = filebatch.fetch_batches(wanted, max_files=256)
    assert [len(b) for b in batches] == [256, 256, 88]
    assert singles == ["big", "unknown"]
