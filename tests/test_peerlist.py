"""Peer lists: the node file formats, a source's outage tracking (the merge of the
sources is tested in test_peers.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.peers.peer_set import normalize_peer_url
from protocol.messages import PeerSourceStatus
from protocol.peerlist import MAX_PEERS, PeerEntry, PeerListError, SourceHealth, parse_node_file


def parse(text: str) -> list[PeerEntry]:
    return parse_node_file(text, normalize_peer_url)


def test_segsync_format_one_url_per_line():
    assert parse("# c\nhttp://a:1/\n\nhttp://b:2 # x\nhttp://a:1\n") == [
        PeerEntry(None, "http://a:1"), PeerEntry(None, "http://b:2")]


def test_wubloader_format_names_and_urls():
    text = ("# wubloader nodes\n"
            "toronto https://toronto.example.com\n"
            "  berlin\thttp://10.0.0.2:8000/   # tab-separated, trailing slash\n"
            "http://bare.example.com\n")
    assert parse(text) == [
        PeerEntry("toronto", "https://toronto.example.com"),
        PeerEntry("berlin", "http://10.0.0.2:8000"),
        PeerEntry(None, "http://bare.example.com"),
    ]


def test_a_url_listed_bare_then_named_takes_the_name():
    assert parse("http://a:1\na http://a:1\n") == [PeerEntry("a", "http://a:1")]


@pytest.mark.parametrize("text, line, why", [
    ("http://a:1\nnot-a-url\n", 2, "must be http(s)"),
    ("http://a:1\nnot a url\n", 2, "got 3 fields"),
    ("a http://a:1 extra\n", 1, "got 3 fields"),
    ("a ftp://a:1\n", 1, "must be http(s)"),
    ("http://a:1 http://b:2\n", 1, "looks like a URL"),
    ("a http://a:1\n# ok\na http://b:2\n", 3, "already names http://a:1 (line 1)"),
    ("a http://a:1\nb http://a:1\n", 2, "already named 'a' (line 1)"),
    ("a http://a:1?x=1\n", 1, "query"),
    ("n\x07 http://a:1\n", 1, "printable"),
    ("x" * 101 + " http://a:1\n", 1, "1 to 100"),
])
def test_bad_lines_are_named(text, line, why):
    with pytest.raises(PeerListError) as e:
        parse(text)
    assert str(e.value).startswith(f"line {line}: ")
    assert why in str(e.value)


def test_too_many_peers():
    text = "".join(f"http://h{i}:1\n" for i in range(MAX_PEERS + 1))
    with pytest.raises(PeerListError, match=f"line {MAX_PEERS + 1}: more than"):
        parse(text)


def test_empty_file_is_no_peers():
    assert parse("# nobody yet\n\n") == []


def test_source_health_logs_an_outage_once_and_its_end_once():
    health = SourceHealth()
    assert health.succeeded(now=1.0) is False and health.last_success == 1.0
    assert health.failed("connection refused", now=2.0) is True
    assert health.failed("timeout", now=3.0) is False
    assert (health.error, health.failing_since, health.failures) == ("timeout", 2.0, 2)
    assert health.succeeded(now=4.0) is True
    assert health.error is None and health.failing_since is None
    assert health.failed("again", now=5.0) is True


def test_source_health_reports_ok_only_once_read():
    health = SourceHealth()
    assert health.ok is None
    assert health.report("file", "/p", 0) == PeerSourceStatus("file", where="/p", peers=0)
    health.succeeded(now=1.0)
    assert health.report("file", "/p", 2) == PeerSourceStatus(
        "file", where="/p", peers=2, ok=True, last_read=1.0)
    health.failed("bad line", now=2.0)
    assert health.report("file", "/p", 2) == PeerSourceStatus(
        "file", where="/p", peers=2, ok=False, error="bad line", failing_since=2.0,
        last_read=1.0)


names = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#"),
                min_size=1, max_size=20).filter(lambda n: "://" not in n)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5})?", fullmatch=True)


@given(st.lists(st.tuples(st.one_of(st.none(), names), hosts, st.integers(1, 65535)),
                max_size=20, unique_by=(lambda t: t[1], lambda t: t[0] or object())),
       st.sampled_from([" ", "\t", "  \t "]), st.booleans())
def test_written_node_files_parse_back(peers, space, comments):
    """Any list of distinct peers, written in either format with any spacing and
    comments, parses back to itself."""
    entries = [PeerEntry(name, f"http://{host}:{port}") for name, host, port in peers]
    lines = ["# generated"] if comments else []
    for e in entries:
        line = f"{space}{e.name}{space}{e.url}/" if e.name else f"{e.url}{space}"
        lines.append(line + (f"{space}# {e.label}" if comments else ""))
        if comments:
            lines.append("")
    assert parse("\n".join(lines)) == entries
