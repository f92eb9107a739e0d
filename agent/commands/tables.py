"""Text tables for a terminal of 100 columns: long cells (names, URLs, hashes) are
shortened with an ellipsis, and a row still too wide continues on the next line,
indented, with whole cells (the terminal would otherwise wrap it mid-word). Pure:
rows in, lines out. Scripts read the `--json` output instead, which is never cut."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from typing import Callable, Sequence

WIDTH = 100
GAP = "  "
INDENT = "    "  # before a row's continuation line
ELLIPSIS = "…"
HASH_SHOWN = 8  # characters of a segment hash kept: enough to tell segments apart
_HASH = re.compile(r"(?<=-)[A-Za-z0-9_-]{43}(?=\.(?:ts|tombstone)\b)")


def shorten_end(text: str, width: int) -> str:
    """`text` cut to `width` characters, ending in an ellipsis when cut."""
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + ELLIPSIS if width > 0 else ""


def shorten_url(url: str, width: int) -> str:
    """`url` cut to `width` characters before its port: the scheme, the start of the
    host (what tells nodes apart) and the port stay."""
    if len(url) <= width:
        return url
    head, colon, port = url.rpartition(":")
    if not colon or not port.isdigit() or "//" not in head or len(port) + 3 > width:
        return shorten_end(url, width)
    return shorten_end(head, width - len(port) - 1) + ":" + port


def shorten_hashes(text: str) -> str:
    """Each segment hash in `text` (the 43 characters before `.ts`/`.tombstone`) cut to
    its first HASH_SHOWN characters."""
    return _HASH.sub(lambda m: m.group(0)[:HASH_SHOWN] + ELLIPSIS, text)


@dataclass(frozen=True)
class Column:
    """A column: its heading, whether it is right-aligned (numbers), and the longest
    its cells may be (longer ones are shortened by `shorten`)."""

    heading: str
    right: bool = False
    max_width: int | None = None
    shorten: Callable[[str, int], str] = shorten_end


def _bands(widths: list[int], width: int) -> list[list[int]]:
    """Column indexes per line: as many as fit on the first line, the rest on
    continuation lines (after INDENT); every line holds at least one column."""
    bands: list[list[int]] = [[]]
    used = 0
    for i, w in enumerate(widths):
        band = bands[-1]
        need = w if not band else len(GAP) + w
        if band and used + need > width:
            bands.append([i])
            used = len(INDENT) + w
        else:
            band.append(i)
            used += need
    return bands


def layout(columns: Sequence[Column], rows: Sequence[Sequence[str]],
           width: int = WIDTH) -> list[str]:
    """The heading line(s), then each row's line(s); no line longer than `width`."""
    cells = [[c.heading for c in columns]]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row of {len(row)} cells for {len(columns)} columns")
        cells.append([col.shorten(cell, col.max_width) if col.max_width else cell
                      for col, cell in zip(columns, row, strict=True)])
    # no single cell may be wider than a continuation line
    room = width - len(INDENT)
    cells = [[cell if len(cell) <= room else col.shorten(cell, room)
              for col, cell in zip(columns, row, strict=True)] for row in cells]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    bands = _bands(widths, width)
    lines = []
    for row in cells:
        for n, band in enumerate(bands):
            parts = [row[i].rjust(widths[i]) if columns[i].right else row[i].ljust(widths[i])
                     for i in band]
            lines.append(((INDENT if n else "") + GAP.join(parts)).rstrip())
    return lines


def wrap(text: str, width: int = WIDTH, indent: str = "", more: str = INDENT) -> list[str]:
    """Free text (an error, a summary line) wrapped at spaces to `width`: the first
    line after `indent`, the next after `more`. Words are never split (a URL longer
    than a line stays whole)."""
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=more,
                         break_long_words=False, break_on_hyphens=False) or [indent.rstrip()]
