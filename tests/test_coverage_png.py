"""`segsync coverage`: PNG maps and index.html from a real archive on disk."""

from __future__ import annotations

import re

from PIL import Image

from agent.commands import cli
from agent.commands.coverage_png import (
    COLOURS, HOUR_CELL_PX, LABEL_ROW_PX, LABEL_WIDTH_PX, OVERVIEW_CELL_PX,
)
from protocol.coverage import FULL, HOLE, TOMBSTONED
from protocol.names import format_hour
from test_dashboard import HOLE_MINUTE, TOMB_MINUTE, hour_start, write_hour


def colour(image: Image.Image, col: int, row: int, cell: int) -> tuple:
    return image.getpixel((col * cell + cell // 2, row * cell + cell // 2))


def minute_colour(overview: Image.Image, minute: int, row: int) -> tuple:
    return overview.getpixel((LABEL_WIDTH_PX + minute * OVERVIEW_CELL_PX + 2,
                              row * LABEL_ROW_PX + LABEL_ROW_PX // 2))


def test_coverage_writes_maps_and_an_index(tmp_path, capsys):
    root, out = tmp_path / "archive", tmp_path / "maps"
    start = hour_start(3)
    buried = write_hour(root, start, skip_minute=HOLE_MINUTE, tombstone_minute=TOMB_MINUTE)
    write_hour(root, start, channel="other")
    assert cli.main(["coverage", "--root", str(root), "--out", str(out), "--hours", "6"]) == 0
    assert "index.html" in capsys.readouterr().out

    hour = format_hour(start)
    overview = Image.open(out / "desertbus_source.png")
    # rows from the first hour held up to now's hour: 4 rows of 60 minutes
    assert overview.size == (LABEL_WIDTH_PX + 60 * OVERVIEW_CELL_PX, 4 * LABEL_ROW_PX)
    assert minute_colour(overview, 0, 0) == COLOURS[FULL]
    assert minute_colour(overview, HOLE_MINUTE, 0) == COLOURS[HOLE]
    assert minute_colour(overview, TOMB_MINUTE, 0) == COLOURS[TOMBSTONED]
    assert minute_colour(overview, HOLE_MINUTE + 1, 0) == COLOURS[FULL]
    assert minute_colour(overview, 0, 1) == COLOURS[HOLE]

    seconds = Image.open(out / f"desertbus_source_{hour}.png")
    assert seconds.size == (60 * HOUR_CELL_PX, 60 * HOUR_CELL_PX)
    assert colour(seconds, 30, HOLE_MINUTE, HOUR_CELL_PX) == COLOURS[HOLE]
    assert colour(seconds, 30, HOLE_MINUTE - 1, HOUR_CELL_PX) == COLOURS[FULL]
    # the hidden segment's own seconds are a hole; its first second bears the tombstone
    first = buried.start.second
    assert colour(seconds, first, TOMB_MINUTE, HOUR_CELL_PX) == COLOURS[TOMBSTONED]
    assert colour(seconds, first + 5, TOMB_MINUTE, HOUR_CELL_PX) == COLOURS[HOLE]

    page = (out / "index.html").read_text()
    linked = set(re.findall(r'(?:href|src)="([^"]+)"', page))
    pngs = {p.name for p in out.glob("*.png")}
    assert linked == pngs and len(pngs) == 2 * (1 + 4)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_coverage_of_an_empty_window_and_bad_arguments(tmp_path, capsys):
    root, out = tmp_path / "archive", tmp_path / "maps"
    write_hour(root, hour_start(30))
    assert cli.main(["coverage", "--root", str(root), "--out", str(out), "--hours", "2"]) == 0
    assert "nothing held" in (out / "index.html").read_text()
    assert cli.main(["coverage", "--root", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert cli.main(["coverage", "--root", str(root), "--out", str(out), "--hours", "0"]) == 2
    assert "--hours" in capsys.readouterr().err
