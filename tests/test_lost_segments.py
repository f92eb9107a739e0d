"""Lost segments: in quarantine with no good copy in the archive (the decision,
protocol.scrub.lost_segments), asked for again by the agent's scrub on each pass and
by the one-shot `segsync scrub`, with real agents, files and HTTP."""

from __future__ import annotations

import datetime as dt
import os

import trio
from hypothesis import given
from hypothesis import strategies as st

from helpers import hours_ago, make_name, write_segment_file
from protocol.names import Kind
from protocol.scrub import lost_segments, quarantine_relpath, quarantined_segment
from test_scrub import NO_PERIODIC, flip_byte, run_cli

START = dt.datetime(2026, 12, 6, 18, 0, tzinfo=dt.timezone.utc)


def path(n: int, hours: int = 0, channel: str = "desertbus") -> str:
    return make_name(bytes([n]), START + dt.timedelta(hours=hours, seconds=2 * n),
                     channel=channel).path


def test_quarantined_segment_inverts_quarantine_relpath():
    p = path(1)
    for attempt in (0, 1, 2, 17):
        assert quarantined_segment(quarantine_relpath(p, attempt)) == p


def test_what_is_not_a_quarantined_segment_is_none():
    p = path(1)
    tombstone = p[: -len(".ts")] + ".tombstone"
    for junk in (p, f"elsewhere/{p}", f".quarantine/{tombstone}", f".quarantine/{p}.0",
                 f".quarantine/{p}.x", f".quarantine/{p}.-1", ".quarantine/notes.txt",
                 ".quarantine/a/b/c", f".quarantine/{p}.tmp", ""):
        assert quarantined_segment(junk) is None, junk


def test_lost_are_those_without_a_good_copy_each_once_oldest_hour_first():
    old, new, healed = path(1, hours=-2), path(2), path(3, hours=-1)
    other_channel = path(4, hours=-2, channel="aaa")
    listed = [quarantine_relpath(new), quarantine_relpath(new, 1),  # rotted twice
              quarantine_relpath(old), quarantine_relpath(healed),
              quarantine_relpath(other_channel), ".quarantine/README"]
    in_archive = {healed}.__contains__
    assert lost_segments(listed, in_archive) == [other_channel, old, new]
    assert lost_segments(listed, lambda p: True) == []
    assert lost_segments([], in_archive) == []


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(-3, 0), st.integers(0, 3)),
                max_size=30),
       st.sets(st.integers(0, 20)))
def test_lost_segments_properties(entries, present_numbers):
    listed = [quarantine_relpath(path(n, h), attempt) for n, h, attempt in entries]
    present = {path(n, h) for n, h, _ in entries if n in present_numbers}
    lost = lost_segments(listed, present.__contains__)
    expected = {path(n, h) for n, h, _ in entries} - present
    assert set(lost) == expected and len(lost) == len(expected)
    keys = [(p.split("/")[2], p.split("/")[0], p.split("/")[1], p.split("/")[3]) for p in lost]
    assert keys == sorted(keys)


# ---- the agent and the one-shot ----

async def test_the_agents_scrub_asks_again_for_lost_segments_on_each_pass(cluster_factory,
                                                                          tmp_path):
    data = os.urandom(50_000)
    name = make_name(data, hours_ago(2))
    write_segment_file(tmp_path / "node0", name, data)  # only a holds it
    # nothing reaches a but the heals: no push, no backfill, passes run by the test
    async with cluster_factory(2, push=False, **NO_PERIODIC) as c:
        a, b = c.nodes
        flip_byte(c.root(0) / name.path)
        first = await a.scrubber.run_pass(None)
        assert (first.rotten, first.healed, first.lost, first.retried) == (1, 0, 1, 0)

        # b still has no copy: asked again, still lost, still shown
        second = await a.scrubber.run_pass(None)
        assert (second.rotten, second.retried, second.recovered) == (0, 1, 0)
        assert list(second.lost_paths) == [name.path] and second.unhealed == 1
        assert a.status.report().scrub.lost_paths == [name.path]

        # b's own downloader writes the segment: the next pass gets it back
        write_segment_file(c.root(1), name, data)
        await b.local_files.rescan(announce_new=False)
        third = await a.scrubber.run_pass(None)
        assert (third.rotten, third.retried, third.recovered, third.unhealed) == (0, 1, 1, 0)
        assert (c.root(0) / name.path).read_bytes() == data
        assert a.index.has(name, Kind.SEGMENT)
        assert a.status.report().scrub.lost_paths == []
        # the rotten bytes stay in quarantine, and are no longer lost
        assert (c.root(0) / quarantine_relpath(name.path)).exists()
        fourth = await a.scrubber.run_pass(None)
        assert (fourth.files, fourth.retried) == (1, 0)


async def test_a_tombstoned_lost_segment_is_not_asked_for(cluster_factory, tmp_path):
    data = os.urandom(20_000)
    name = make_name(data, hours_ago(2))
    quarantined = tmp_path / "node0" / quarantine_relpath(name.path)
    quarantined.parent.mkdir(parents=True)
    quarantined.write_bytes(data[:100])  # lost once, then the operator hid it
    (tmp_path / "node0" / name.format(Kind.TOMBSTONE)).parent.mkdir(parents=True)
    (tmp_path / "node0" / name.format(Kind.TOMBSTONE)).touch()
    async with cluster_factory(2, push=False, **NO_PERIODIC) as c:
        a, b = c.nodes
        write_segment_file(c.root(1), name, data)  # b could give it back
        await b.local_files.rescan(announce_new=False)
        report = await a.scrubber.run_pass(None)
        assert report.retried == 0 and not (c.root(0) / name.path).exists()


async def test_one_shot_scrub_asks_again_for_what_the_agent_lost(cluster_factory, tmp_path):
    """The archive as a running agent left it: the rotten copy in quarantine, no peer
    had a good one then. `segsync scrub --from PEER` used to find nothing to do."""
    root = tmp_path / "archive"
    data = os.urandom(30_000)
    name = make_name(data, hours_ago(3))
    quarantined = root / quarantine_relpath(name.path)
    quarantined.parent.mkdir(parents=True)
    quarantined.write_bytes(data[:1000])
    async with cluster_factory(1, connect=False, **NO_PERIODIC) as c:
        b = c.nodes[0]
        done = await trio.to_thread.run_sync(run_cli, "--root", str(root), "--from", b.url)
        assert done.returncode == 1, done.stdout + done.stderr  # b has none either
        assert "asked for again: 1, healed 0" in done.stdout
        assert f"LOST (no peer had a good copy): {name.path}" in done.stdout

        write_segment_file(c.root(0), name, data)
        await b.local_files.rescan(announce_new=False)
        done = await trio.to_thread.run_sync(run_cli, "--root", str(root), "--from", b.url)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "asked for again: 1, healed 1" in done.stdout and "LOST" not in done.stdout
        assert (root / name.path).read_bytes() == data
        assert quarantined.read_bytes() == data[:1000]  # never deleted

        done = await trio.to_thread.run_sync(run_cli, "--root", str(root), "--from", b.url)
        assert done.returncode == 0 and "checked 1 files" in done.stdout
        assert "asked for again" not in done.stdout
