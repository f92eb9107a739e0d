"""Text tables that fit 100 columns (agent.commands.tables): cells shortened, rows
wrapped by whole cells, free text wrapped at spaces."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from helpers import make_name
from agent.commands.tables import (
    ELLIPSIS, INDENT, WIDTH, Column, layout, shorten_end, shorten_hashes, shorten_url, wrap,
)


def test_shorten():
    assert shorten_end("abcdef", 6) == "abcdef"
    assert shorten_end("abcdefg", 6) == "abcde" + ELLIPSIS
    url = "https://a-very-long-host-name.archive.example.org:8200"
    short = shorten_url(url, 30)  # the host's start and the port stay
    assert len(short) == 30 and short == "https://a-very-long-host" + ELLIPSIS + ":8200"
    assert shorten_url(url, len(url)) == url
    assert shorten_url("https://" + "h" * 40, 20) == shorten_end("https://" + "h" * 40, 20)


def test_shorten_hashes_keeps_the_rest_of_a_path():
    name = make_name(b"x" * 10, dt.datetime(2026, 12, 6, 18, 1, 2, tzinfo=dt.timezone.utc))
    short = shorten_hashes(f"lost: {name.path} and {name.path}")
    head = f"{name.channel}/{name.quality}/{name.hour}/01:02.000000-2.0-full-"
    one = f"{head}{name.hash_text[:8]}{ELLIPSIS}.ts"
    assert short == f"lost: {one} and {one}"
    assert shorten_hashes("no hash here.ts") == "no hash here.ts"


def test_a_narrow_table_is_one_line_per_row():
    cols = [Column("peer"), Column("n", right=True)]
    assert layout(cols, [["a", "1"], ["bb", "22"]]) == ["peer   n", "a      1", "bb    22"]


def test_a_wide_row_continues_on_an_indented_line_with_whole_cells():
    cols = [Column("peer", max_width=30), Column("url", max_width=40, shorten=shorten_url)]
    cols += [Column(f"col{i}", right=True) for i in range(8)]
    name = "a-peer-name-" + "x" * 80
    url = "https://" + "h" * 60 + ".example.org:8200"
    lines = layout(cols, [[name, url] + [str(10 ** i) for i in range(8)]])
    assert all(len(line) <= WIDTH for line in lines)
    heads, row = lines[:2], lines[2:]
    assert len(heads) == len(row) == 2
    assert heads[1].startswith(INDENT) and row[1].startswith(INDENT)
    cells = row[0].split() + row[1].split()
    assert cells[0] == shorten_end(name, 30) and len(cells[0]) == 30
    assert cells[1] == "https://" + "h" * 26 + ELLIPSIS + ":8200"
    assert cells[2:] == [str(10 ** i) for i in range(8)]  # every number whole
    # every heading sits over its cell: left edges of the two text columns, right
    # edges of the numbers
    def spans(line):
        import re
        return [(m.start(), m.end()) for m in re.finditer(r"\S+", line)]
    (h0, h1), (r0, r1) = map(spans, heads), map(spans, row)
    assert [s for s, _ in h0[:2]] == [s for s, _ in r0[:2]]
    assert [e for _, e in h0[2:]] == [e for _, e in r0[2:]]
    assert [e for _, e in h1] == [e for _, e in r1]


@given(st.lists(st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                  min_size=1, max_size=150), min_size=4, max_size=4),
                max_size=6))
def test_never_wider_than_the_terminal_and_nothing_lost(rows):
    cols = [Column("peer", max_width=24), Column("url", max_width=40, shorten=shorten_url),
            Column("kind"), Column("count", right=True)]
    lines = layout(cols, rows)
    assert all(len(line) <= WIDTH for line in lines)
    per_row = len(lines) // (len(rows) + 1)
    assert len(lines) == per_row * (len(rows) + 1)
    for row, start in zip(rows, range(per_row, len(lines), per_row)):
        text = " ".join(lines[start:start + per_row])
        for cell in row:
            if len(cell) <= 24:  # short cells are never cut
                assert cell in text


def test_wrap_at_spaces_never_inside_a_word():
    url = "https://" + "h" * 120 + ":8200"
    text = f"peer-b: unreachable: cannot connect to {url} after 3 attempts (connection refused)"
    lines = wrap(text, indent="  ")
    assert lines[0].startswith("  peer-b:") and all(line.startswith(INDENT) for line in lines[1:])
    assert url in [w for line in lines for w in line.split()]
    assert " ".join(" ".join(lines).split()) == text
    assert all(len(line) <= WIDTH or url in line for line in lines)
