"""Pure decisions of the clean-up tools, and the status table, without sockets."""

from __future__ import annotations

import datetime as dt

from agent.commands.status_view import format_age, format_uptime, render_status
from helpers import make_name
from protocol.cleanup import duplicate_groups, purge_decision
from protocol.messages import PeerStatus, StatusReply, TlsStatus
from protocol.selection import Candidate

T = dt.datetime(2019, 11, 13, 2, 45, 51, 608000, tzinfo=dt.timezone.utc)
PEERS = ["http://b:8200", "http://c:8200"]


def cand(data: bytes, start=T, size=None, **kw) -> Candidate:
    return Candidate(make_name(data, start, **kw), len(data) if size is None else size)


# ---- purge ----

def test_purge_only_when_every_peer_holds_the_tombstone():
    d = purge_decision("p.ts", PEERS, {PEERS[0]: True, PEERS[1]: True})
    assert d.delete and "all 2 peers" in d.reason


def test_purge_keeps_when_a_peer_lacks_it():
    d = purge_decision("p.ts", PEERS, {PEERS[0]: True, PEERS[1]: False})
    assert not d.delete and d.reason == "tombstone missing on http://c:8200"


def test_purge_keeps_when_a_peer_cannot_be_asked():
    d = purge_decision("p.ts", PEERS, {PEERS[0]: "ConnectError", PEERS[1]: True})
    assert not d.delete and d.reason == "could not ask http://b:8200: ConnectError"
    d = purge_decision("p.ts", PEERS, {PEERS[0]: True})  # no answer at all
    assert not d.delete and "could not ask http://c:8200: no answer" in d.reason


def test_purge_keeps_both_reasons():
    d = purge_decision("p.ts", PEERS, {PEERS[0]: False, PEERS[1]: "timeout"})
    assert not d.delete
    assert d.reason == "tombstone missing on http://b:8200; could not ask http://c:8200: timeout"


def test_purge_with_no_peers_keeps():
    d = purge_decision("p.ts", [], {})
    assert not d.delete and "no peers known" in d.reason


# ---- dupes ----

def test_single_versions_are_not_dupes():
    assert duplicate_groups([cand(b"a"), cand(b"b", T + dt.timedelta(seconds=2))]) == []


def test_dupe_group_keeps_best_and_explains_each_loser():
    big = cand(b"a" * 30)
    small = cand(b"b" * 20)
    partial = cand(b"c" * 40, type_="partial")
    suspect = cand(b"d" * 40, type_="suspect")
    short = cand(b"e" * 50, duration="1.5")
    temp = cand(b"f" * 99, type_="temp")  # never used, so never competes
    other = cand(b"g", T + dt.timedelta(seconds=2))
    groups = duplicate_groups([partial, temp, small, other, short, big, suspect])
    assert len(groups) == 1
    g = groups[0]
    assert g.start == T and g.keep == big
    assert g.losers == [
        (small, "larger file (30 > 20 bytes)"),
        (short, "longer duration (2.0 s > 1.5 s)"),
        (suspect, "full beats suspect"),
        (partial, "full beats partial"),
    ]


def test_equal_fulls_tie_break_on_hash():
    x, y = cand(b"x" * 10), cand(b"y" * 10)
    g = duplicate_groups([x, y])[0]
    winner, loser = (x, y) if x.name.hash > y.name.hash else (y, x)
    assert g.keep == winner and g.losers == [(loser, "higher hash (tie-break)")]


def test_groups_come_in_start_order():
    later = T + dt.timedelta(seconds=4)
    groups = duplicate_groups([cand(b"1", later), cand(b"2", later), cand(b"3"), cand(b"4")])
    assert [g.start for g in groups] == [T, later]


# ---- status table ----

def test_format_age():
    assert format_age(None, 100.0) == "never"
    assert format_age(95.0, 100.0) == "5s ago"
    assert format_age(100.0 - 600, 100.0) == "10m ago"
    assert format_age(100.0 - 5 * 3600, 100.0) == "5h ago"
    assert format_age(100.0 - 3 * 86400, 100.0) == "3d ago"
    assert format_age(200.0, 100.0) == "in the future"
    assert format_uptime(3725) == "1h02m" and format_uptime(59) == "0m59s"
    assert format_uptime(2 * 86400 + 3600) == "2d01h"


def test_render_status_table():
    now = 1_000_000.0
    status = StatusReply(
        node="a", url="http://a:8200", started_at=now - 90, time=now,
        segments=12,
        peers=[
            PeerStatus(url="http://b:8200", name="b", kind="segsync", reachable=True, reach_error=None,
                       last_push=now - 3, push_error=None, push_dropped=0,
                       last_round=now - 40, round_ok=True, round_error=None,
                       queue_depth=0, missing=2),
            PeerStatus(url="http://c:8200", reachable=False,
                       reach_error="http://c:8200: ConnectError: refused",
                       last_push=None, push_error="http://c:8200: ConnectError: refused",
                       push_dropped=7, last_round=None, round_ok=False,
                       round_error="boom", queue_depth=1234, missing=None),
        ],
    )
    lines = render_status(status).splitlines()
    assert lines[0] == "node a at http://a:8200, up 1m30s, 12 segments"
    table = [line.split("  ") for line in lines[2:5]]
    assert [c.strip() for c in table[0] if c.strip()] == [
        "peer", "url", "kind", "reachable", "last push", "last round", "result", "queue",
        "missing"]
    assert [c.strip() for c in table[1] if c.strip()] == [
        "b", "http://b:8200", "segsync", "yes", "3s ago", "40s ago", "ok", "0", "2"]
    assert [c.strip() for c in table[2] if c.strip()] == [  # a peer without a name: its URL
        "http://c:8200", "http://c:8200", "-", "NO", "never", "never", "FAILED", "1234", "-"]
    text = "\n".join(lines[5:])
    assert "http://c:8200: unreachable: ConnectError: refused" in text
    assert "http://c:8200: last push failed: ConnectError: refused" in text
    assert "http://c:8200: last round failed: boom" in text
    assert "http://c:8200: 7 pushes dropped" in text
    assert "http://b:8200:" not in text


def test_render_status_tls_lines():
    base = dict(node="a", url="https://a:8200", started_at=0, time=5, segments=0, peers=[])
    assert "tls" not in render_status(StatusReply(**base))  # plain http, or an older node
    tls = TlsStatus(cert="/etc/segsync/tls/node.crt", subject="CN=a", not_after=86400.0,
                    loaded_at=0.0, problem="expired at 1970-01-02 00:00:00 UTC",
                    reload_error="tls-cert x and tls-key y are not a usable pair")
    out = render_status(StatusReply(**base, tls=tls))
    assert "tls: CN=a from /etc/segsync/tls/node.crt, valid until 1970-01-02 00:00 UTC" in out
    assert "TLS CERTIFICATE EXPIRED AT 1970-01-02 00:00:00 UTC: peers refuse it" in out
    assert "TLS RELOAD FAILED: tls-cert x and tls-key y are not a usable pair" in out


def test_render_status_without_peers():
    out = render_status(StatusReply(node="a", url="u", started_at=0, time=5,
                                    segments=0, peers=[]))
    assert "no peers configured" in out
