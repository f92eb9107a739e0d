"""Pure decisions for wubloader (legacy) peers: protocol/legacy.py and
protocol/peerkind.py, no sockets."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from helpers import make_name
from protocol import messages as m
from protocol.errors import ProtocolError
from protocol.endpoints import files_url
from protocol.legacy import (
    MAX_LIST_ITEMS,
    decode_name_list,
    hours_to_list,
    valid_components,
)
from protocol.peerkind import (
    PeerKind,
    classify_probe,
    is_segsync_reply,
    needs_probe,
    parse_peer_kind,
)
from protocol.replication import plan_hour

AUTO, SEGSYNC, WUBLOADER = PeerKind.AUTO, PeerKind.SEGSYNC, PeerKind.WUBLOADER

NOW = dt.datetime(2026, 12, 1, 10, 30, tzinfo=dt.timezone.utc)
START = dt.datetime(2026, 12, 1, 9, 15, 0, 500000, tzinfo=dt.timezone.utc)


def test_name_list_decodes_a_json_list_of_strings():
    assert decode_name_list(b'["a", "b"]') == ["a", "b"]
    assert decode_name_list(b"[]") == []


@pytest.mark.parametrize("body", [
    b"<!doctype html><title>404 Not Found</title>", b"\x00\xff[\"x", b"", b'{"a": 1}',
    b'"text"', b"[1, 2]", b'[["a"]]', json.dumps(["x" * 2000]).encode(),
    json.dumps(["a"] * (MAX_LIST_ITEMS + 1)).encode(),
])
def test_name_list_refuses_anything_else(body):
    with pytest.raises(ProtocolError):
        decode_name_list(body)


def test_components_skip_names_we_cannot_hold_and_chat():
    assert valid_components(["source", ".hidden", "a/b", "480p", "chat", "source"],
                            skip=frozenset({"chat"})) == ["480p", "source"]


def test_hours_in_range_newest_first_non_hours_ignored():
    remote = ["2026-12-01T08", "2026-12-01T10", "junk", "2026-11-30T23", "2026-12-01T09",
              "2026-13-01T00", "2026-12-01T11"]
    assert hours_to_list(remote, "2026-12-01T00", "2026-12-01T10") == [
        "2026-12-01T10", "2026-12-01T09", "2026-12-01T08"]


def test_legacy_plan_keeps_plan_hour_rules():
    full = make_name(b"a", START)
    recent = make_name(b"b", NOW - dt.timedelta(seconds=30))
    tomb = make_name(b"c", START + dt.timedelta(seconds=4))
    wub_temp = f"{START:%M:%S.%f}-2.0-temp-2f1c7e0e-6b7d-4f8e-9a0b-1c2d3e4f5a6b.ts"
    temp = make_name(b"d", START, type_="temp").filename
    hour = full.hour
    peer = [full.filename, tomb.tombstone_filename, temp, wub_temp, "chat.json"]
    plan = plan_hour(full.channel, full.quality, hour, peer, set(), NOW, 120)
    assert plan.fetch == [full] and plan.skipped_near_duplicate == 0
    assert plan.tombstones == [tomb]
    # wubloader's temp (a UUID for a hash) is a temp segment too (issue 11); chat.json invalid
    assert plan.skipped_temp == 2 and plan.invalid == 1
    # started 30 s ago: the local downloader may still be fetching it
    plan = plan_hour(recent.channel, recent.quality, recent.hour, [recent.filename],
                     set(), NOW, 120)
    assert plan.fetch == [] and plan.skipped_recent == 1


def test_near_duplicate_within_a_millisecond_is_left_out():
    ours = make_name(b"same bytes", START)
    theirs_near = make_name(b"same bytes", START + dt.timedelta(microseconds=800))
    theirs_far = make_name(b"same bytes", START + dt.timedelta(microseconds=1500))
    other_bytes = make_name(b"other bytes", START + dt.timedelta(microseconds=500))
    plan = plan_hour(
        ours.channel, ours.quality, ours.hour,
        [theirs_near.filename, theirs_far.filename, other_bytes.filename],
        {ours.filename}, NOW, 0)
    assert plan.skipped_near_duplicate == 1
    assert set(plan.fetch) == {theirs_far, other_bytes}


def test_probe_classification():
    assert classify_probe(200, True, None, False) == SEGSYNC
    assert classify_probe(401, True, None, False) == SEGSYNC  # another token: still segsync
    assert classify_probe(404, False, 200, True) == WUBLOADER
    assert classify_probe(405, False, 200, True) == WUBLOADER
    assert classify_probe(404, False, 200, False) is None  # an HTML page, not wubloader
    assert classify_probe(404, False, 500, False) is None
    assert classify_probe(500, False, None, False) is None
    assert classify_probe(None, False, None, False) is None  # down


def test_reprobe_policy():
    assert needs_probe(AUTO, None, None, 0, 600)
    assert not needs_probe(AUTO, SEGSYNC, 0, 10_000, 600)  # until its /v1 goes missing
    assert not needs_probe(AUTO, WUBLOADER, 0, 599, 600)
    assert needs_probe(AUTO, WUBLOADER, 0, 600, 600)  # it may have moved to segsync
    assert not needs_probe(WUBLOADER, None, None, 0, 600)  # set in the config
    assert not needs_probe(SEGSYNC, None, None, 0, 600)


def test_segsync_reply_recognised():
    assert is_segsync_reply(m.encode(m.PairDigests("2026-12-01T10", "2026-12-01T10", [])))
    assert is_segsync_reply(m.encode(m.Error("unauthorized", "missing token")))
    for other in (b"<!doctype html><title>404 Not Found</title>", b"", b"[]",
                  m.encode(m.Ack("stored"))):
        assert not is_segsync_reply(other)


def test_configured_kinds():
    assert parse_peer_kind("wubloader") is WUBLOADER
    assert parse_peer_kind("legacy") is WUBLOADER  # the first releases' name
    assert parse_peer_kind("segsync") is SEGSYNC and parse_peer_kind("auto") is AUTO
    for bad in ("Wubloader", "", None, 1):
        with pytest.raises(ValueError, match="not a peer kind"):
            parse_peer_kind(bad)


def test_listing_paths_are_percent_encoded():
    assert files_url() == "/files"
    assert files_url("desert bus", "source") == "/files/desert%20bus/source"
    assert files_url("a?b", "c#d", "2026-12-01T10") == "/files/a%3Fb/c%23d/2026-12-01T10"
