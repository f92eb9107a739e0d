"""`segsync coverage`: static PNG coverage maps and an index.html, for operators who
publish maps from a cron job (as wubloader's segment_coverage does).

Per (channel, quality): one overview (hours down, minutes across) and, per hour, a
map of its seconds (minutes down, seconds across). Every file is written under a
temporary name and renamed: a web server never serves half a PNG.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from protocol.coverage import (
    FULL,
    FUTURE,
    HOLE,
    PARTIAL,
    TOMBSTONED,
    map_window,
    pair_rows,
)

from ..archive.index import ArchiveIndex
from ..serve.coverage_maps import local_spans

COLOURS = {  # the dashboard's colours
    FULL: (0x2E, 0x9E, 0x44), PARTIAL: (0xE0, 0xB0, 0x00), HOLE: (0xDD, 0x33, 0x33),
    TOMBSTONED: (0x55, 0x55, 0x55), FUTURE: (0xE8, 0xE8, 0xE8),
}
OVERVIEW_CELL_PX = 8   # a minute of the overview (wide; rows are LABEL_ROW_PX high)
LABEL_ROW_PX = 14      # an hour's row in the overview, its label beside it
LABEL_WIDTH_PX = 100
HOUR_CELL_PX = 4       # a second of an hour's map


def render_rows(rows: list[str], cell_px: int) -> Image.Image:
    """Rows of cell codes as an image: one row of cells per row, cell_px square each."""
    if not rows:
        raise ValueError("no rows to draw")
    width = len(rows[0])
    image = Image.new("RGB", (width, len(rows)))
    image.putdata([COLOURS[code] for row in rows for code in row])
    return image.resize((width * cell_px, len(rows) * cell_px), Image.Resampling.NEAREST)


def render_overview(hours: list[str], rows: list[str]) -> Image.Image:
    """The overview: one labelled row per hour (a row a pixel apart from the next)."""
    cells = render_rows(rows, 1).resize(
        (len(rows[0]) * OVERVIEW_CELL_PX, len(rows)), Image.Resampling.NEAREST)
    image = Image.new("RGB", (LABEL_WIDTH_PX + cells.width, len(rows) * LABEL_ROW_PX),
                      (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for i, hour in enumerate(hours):
        top = i * LABEL_ROW_PX
        image.paste(cells.crop((0, i, cells.width, i + 1)).resize(
            (cells.width, LABEL_ROW_PX - 1), Image.Resampling.NEAREST), (LABEL_WIDTH_PX, top))
        draw.text((2, top + 1), hour, fill=(0, 0, 0))
    return image


def write_atomically(path: Path, data: bytes) -> None:
    """Complete and synced, then renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _safe(component: str) -> str:
    """A channel or quality as a file name part (names are validated: no '/')."""
    return component.replace(os.sep, "_")


def write_maps(index: ArchiveIndex, out: Path, now: dt.datetime, hours: int) -> list[Path]:
    """Draw every (channel, quality) of the index over the last `hours` hours; returns
    the files written, index.html last."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sections = []
    for channel, quality in index.pairs():
        window = map_window(index.hours(channel, quality), now, hours)
        if not window:
            continue
        spans = local_spans(index, (channel, quality), window)
        prefix = f"{_safe(channel)}_{_safe(quality)}"
        overview = out / f"{prefix}.png"
        write_atomically(overview, png_bytes(render_overview(
            window, pair_rows(spans, window, 60, now))))
        written.append(overview)
        links = []
        for hour in window:
            seconds = pair_rows(spans, [hour], 1, now)[0]
            path = out / f"{prefix}_{hour}.png"
            write_atomically(path, png_bytes(render_rows(
                [seconds[i:i + 60] for i in range(0, 3600, 60)], HOUR_CELL_PX)))
            written.append(path)
            links.append((hour, path.name))
        sections.append((channel, quality, overview.name, links))
    page = out / "index.html"
    write_atomically(page, index_html(sections, now).encode())
    written.append(page)
    return written


def index_html(sections: list[tuple[str, str, str, list[tuple[str, str]]]],
               now: dt.datetime) -> str:
    esc = html.escape
    parts = [
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>segsync coverage</title><style>body{font:14px system-ui,sans-serif;"
        "margin:1em 2em} img{image-rendering:pixelated;border:1px solid #ccc}"
        " li{display:inline-block;margin:0 .6em .3em 0}</style></head><body>",
        f"<h1>segsync coverage</h1><p>as of {esc(now.isoformat(timespec='seconds'))}. "
        "Green: full; yellow: partial or suspect only; red: hole; grey: tombstoned; "
        "light grey: not yet. Overview: one row per hour, one cell per minute. "
        "Hour maps: one row per minute, one cell per second.</p>",
    ]
    for channel, quality, overview, links in sections:
        parts.append(f"<h2>{esc(channel)} / {esc(quality)}</h2>"
                     f"<img src=\"{esc(overview)}\" alt=\"{esc(channel)} {esc(quality)}\">"
                     "<ul>")
        parts.extend(f"<li><a href=\"{esc(name)}\">{esc(hour)}</a></li>" for hour, name in links)
        parts.append("</ul>")
    if not sections:
        parts.append("<p>nothing held in this window</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def index_from_disk(root: Path) -> ArchiveIndex:
    """One scan of the archive into an index (the agent's own listing rules)."""
    from ..archive.store import Store, classify_hour

    def scanned():
        for channel, quality, hour, names in Store(root).scan():
            listing = classify_hour(channel, quality, hour, names)
            yield channel, quality, hour, listing.segments + listing.hidden + listing.tombstones

    index = ArchiveIndex()
    index.replace_all(scanned())
    return index
