"""The operator's tools against real agents: status, tombstone, purge, dupes."""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from pathlib import Path

import httpx
import trio

from agent.commands import cli
from conftest import wait_until
from helpers import hours_ago, make_name, touch_tombstone, write_segment_file
from protocol.names import Kind


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`segsync ARGV...` in a worker thread (it runs its own trio loop), output captured."""
    capsys.readouterr()
    code = await trio.to_thread.run_sync(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def listing(node, name) -> list[str]:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{node.url}/files/{name.channel}/{name.quality}/{name.hour}")
        r.raise_for_status()
        return r.json()


def put_segment(root: Path, when: dt.datetime, size: int = 5000, **kw):
    data = os.urandom(size)
    name = make_name(data, when, **kw)
    write_segment_file(root, name, data)
    return name


# ---- status ----

async def test_status_table_shows_each_peer(cluster_factory, capsys):
    async with cluster_factory(3) as c:
        a = c.nodes[0]
        name = put_segment(c.root(0), hours_ago(0))
        for i in (1, 2):
            await wait_until(lambda: c.nodes[i].index.has(name, Kind.SEGMENT))
        await wait_until(lambda: all(a.pusher.state(p).last_success for p in a.peers))
        # node 1 gets a segment node 0 lacks: the next comparison finds it missing
        extra = put_segment(c.root(1), hours_ago(5))
        for node in (a, c.nodes[2]):  # pushed to both
            await wait_until(lambda: node.index.has(extra, Kind.SEGMENT))
        os.unlink(c.root(0) / extra.path)
        await a.local_files.rescan(announce_new=False)
        await a.backfiller.round_with_peer(c.nodes[2].url)
        b_url, c_url = c.nodes[1].url, c.nodes[2].url
        await c.stop_node(1)

        code, out, err = await run_cli(capsys, "status", "--node", a.url)
        assert code == 0, err
        assert f"node {a.config.node_name} at {a.url}" in out
        header = next(line for line in out.splitlines() if line.startswith("peer"))
        assert header.split() == ["peer", "url", "kind", "reachable", "last", "push", "last",
                                  "round", "result", "queue", "missing"]
        b_name, c_name = c.nodes[1].config.node_name, c.nodes[2].config.node_name
        # node 2: up, pushed to seconds ago, one round done and ok, one segment was missing
        assert re.search(rf"^{c_name}\s+{re.escape(c_url)}\s+segsync\s+yes\s+\d+s ago\s+"
                         rf"\d+s ago\s+ok\s+0\s+1$", out, re.M), out
        # node 1: stopped, so unreachable; no round yet
        assert re.search(rf"^{b_name}\s+{re.escape(b_url)}\s+segsync\s+NO\s+\d+s ago\s+"
                         rf"never\s+-\s+0\s+-$", out, re.M), out
        assert f"{b_name}: unreachable:" in out


async def test_status_exit_code_when_node_unreachable(cluster_factory, capsys):
    async with cluster_factory(1) as c:
        url = c.nodes[0].url
        await c.stop_node(0)
        code, out, err = await run_cli(capsys, "status", "--node", url, "--timeout", "2")
        assert code != 0
        assert "cannot reach node" in err and url in err
        assert out == ""


async def test_status_with_token(cluster_factory, capsys, tmp_path):
    async with cluster_factory(2, token="s3cret-token") as c:
        url = c.nodes[0].url
        code, _, err = await run_cli(capsys, "status", "--node", url)
        assert code == 1 and "401" in err
        token_file = tmp_path / "token"
        token_file.write_text("s3cret-token\n")
        code, out, err = await run_cli(capsys, "status", "--node", url,
                                       "--token-file", str(token_file))
        assert code == 0, err
        assert re.search(rf"\s{re.escape(c.nodes[1].url)}\s+segsync\s+yes\s", out, re.M), out


# ---- tombstone ----

async def test_tombstone_command_propagates(cluster_factory, capsys):
    async with cluster_factory(3) as c:
        names = [put_segment(c.root(0), hours_ago(0) + dt.timedelta(seconds=2 * i))
                 for i in range(2)]
        for i in (1, 2):
            for name in names:
                await wait_until(lambda: c.nodes[i].index.has(name, Kind.SEGMENT))
        # absolute path on node 1
        code, out, err = await run_cli(capsys, "tombstone", str(c.root(1) / names[0].path))
        assert code == 0, err
        assert out.startswith("tombstoned: ")
        assert (c.root(1) / names[0].format(Kind.TOMBSTONE)).exists()
        for node in c.nodes:
            await wait_until(lambda: node.index.has(names[0], Kind.TOMBSTONE))
            assert names[0].filename not in await listing(node, names[0])
            assert names[1].filename in await listing(node, names[1])
        # a second time: already there, still fine
        code, out, _ = await run_cli(capsys, "tombstone", str(c.root(1) / names[0].path))
        assert code == 0 and out.startswith("already tombstoned: ")

        # a relative path, from inside the archive (a real process, its own cwd)
        rel = os.path.join(names[1].hour, names[1].filename)
        proc = await trio.run_process(
            [sys.executable, "-m", "agent.commands.cli", "tombstone", rel],
            cwd=c.root(2) / names[1].channel / names[1].quality, capture_stdout=True,
            capture_stderr=True, check=False)
        assert proc.returncode == 0, proc.stderr.decode()
        for node in c.nodes:
            await wait_until(lambda: node.index.has(names[1], Kind.TOMBSTONE))


async def test_tombstone_refuses_what_is_not_a_segment(tmp_path, capsys):
    name = put_segment(tmp_path, hours_ago(1))
    seg = tmp_path / name.path
    bad = [
        tmp_path / "notes.txt",
        seg.parent / "readme.ts",
        seg.parent / name.tombstone_filename,
        seg.parent / f"{name.start:%M:%S.%f}-2.0-temp-{name.hash_text}.ts",
        seg.parent / name.filename.replace("-full-", "-partial-"),  # no such file
        seg.parent,
    ]
    (tmp_path / "notes.txt").write_text("x")
    for path in bad:
        code, out, err = await run_cli(capsys, "tombstone", str(seg), str(path))
        assert code == 2, path
        assert f"refusing {path}" in err
        assert "nothing was tombstoned" in err
        assert out == ""
    assert not (tmp_path / name.format(Kind.TOMBSTONE)).exists()
    assert not any(p.name.endswith(".tombstone") for p in tmp_path.rglob("*"))
    # --missing-ok: a tombstone for a segment this node lacks (prevents future fetches)
    missing = bad[4]
    code, out, err = await run_cli(capsys, "tombstone", "--missing-ok", str(missing))
    assert code == 0, err
    assert missing.with_suffix(".tombstone").exists()


# ---- purge ----

async def test_purge_deletes_only_what_every_peer_confirms(cluster_factory, capsys):
    async with cluster_factory(3, connect=False) as c:
        s1 = put_segment(c.root(0), hours_ago(2))
        s2 = put_segment(c.root(0), hours_ago(3))
        s3 = put_segment(c.root(0), hours_ago(3) + dt.timedelta(seconds=2))
        for i in range(3):
            for s in (s1, s2, s3):
                if i:
                    write_segment_file(c.root(i), s, (c.root(0) / s.path).read_bytes())
            touch_tombstone(c.root(i), s1)
            if i != 2:
                touch_tombstone(c.root(i), s2)  # node 2 never got this one
        for i in range(3):
            node = c.nodes[i]
            await wait_until(lambda: node.index.has(s1, Kind.TOMBSTONE))
            await wait_until(lambda: node.index.has(s3, Kind.SEGMENT))
            if i != 2:
                await wait_until(lambda: node.index.has(s2, Kind.TOMBSTONE))
        await c.connect()  # now node 0 knows its peers; nothing new gets pushed
        a = c.nodes[0]
        root = str(c.root(0))

        code, out, err = await run_cli(capsys, "purge", "--root", root, "--node", a.url,
                                       "--dry-run")
        assert code == 0, err
        assert re.search(rf"^would delete\s+{re.escape(s1.path)}\s", out, re.M), out
        assert re.search(rf"^kept\s+{re.escape(s2.path)}\s+\(tombstone missing on "
                         rf"{re.escape(c.nodes[2].url)}\)", out, re.M), out
        assert "would delete 1, kept 1" in out
        assert (c.root(0) / s1.path).exists()

        code, out, err = await run_cli(capsys, "purge", "--root", root, "--node", a.url)
        assert code == 0, err
        assert re.search(rf"^deleted\s+{re.escape(s1.path)}\s", out, re.M), out
        assert "deleted 1, kept 1" in out
        assert not (c.root(0) / s1.path).exists()
        assert (c.root(0) / s1.format(Kind.TOMBSTONE)).exists()  # tombstones stay, always
        assert (c.root(0) / s2.path).exists()
        assert (c.root(0) / s3.path).exists()  # never tombstoned: never a candidate
        for i in (1, 2):
            assert (c.root(i) / s1.path).exists()  # purge is local

        # a peer that cannot be asked confirms nothing
        touch_tombstone(c.root(2), s2)
        await wait_until(lambda: c.nodes[2].index.has(s2, Kind.TOMBSTONE))
        b_url = c.nodes[1].url
        await c.stop_node(1)
        code, out, err = await run_cli(capsys, "purge", "--root", root, "--node", a.url)
        assert code == 0, err
        assert re.search(rf"^kept\s+{re.escape(s2.path)}\s+\(could not ask "
                         rf"{re.escape(b_url)}: ", out, re.M), out
        assert (c.root(0) / s2.path).exists()


async def test_purge_refuses_without_the_node(cluster_factory, capsys):
    async with cluster_factory(1) as c:
        s = put_segment(c.root(0), hours_ago(2))
        touch_tombstone(c.root(0), s)
        url = c.nodes[0].url
        await c.stop_node(0)
        code, out, err = await run_cli(capsys, "purge", "--root", str(c.root(0)), "--node", url)
        assert code == 1 and "nothing deleted" in err
        assert (c.root(0) / s.path).exists()


async def test_purge_without_peers_keeps_everything(cluster_factory, capsys):
    async with cluster_factory(1) as c:
        s = put_segment(c.root(0), hours_ago(2))
        touch_tombstone(c.root(0), s)
        code, out, err = await run_cli(capsys, "purge", "--root", str(c.root(0)),
                                       "--node", c.nodes[0].url)
        assert code == 0, err
        assert "no peers known" in out and "deleted 0, kept 1" in out
        assert (c.root(0) / s.path).exists()


# ---- dupes ----

async def test_dupes_shows_winner_and_tombstones_losers(cluster_factory, capsys):
    async with cluster_factory(2) as c:
        t = hours_ago(4)
        hour = make_name(b"x", t).hour
        full_big = put_segment(c.root(0), t, size=3000)
        full_small = put_segment(c.root(0), t, size=2000)
        partial = put_segment(c.root(0), t, size=4000, type_="partial")
        short = put_segment(c.root(0), t, size=5000, duration="1.5")
        alone = put_segment(c.root(0), t + dt.timedelta(seconds=2))
        everything = [full_big, full_small, partial, short, alone]
        for node in c.nodes:
            for s in everything:
                await wait_until(lambda: node.index.has(s, Kind.SEGMENT))
        root = str(c.root(0))

        code, out, err = await run_cli(capsys, "dupes", "--root", root, "desertbus", "source",
                                       "--hour", hour)
        assert code == 0, err
        assert "5 visible segments, 1 start times with more than one version" in out
        lines = out.splitlines()
        keep = [line for line in lines if line.strip().startswith("keep")]
        lose = [line for line in lines if line.strip().startswith("lose")]
        assert len(keep) == 1 and full_big.filename in keep[0]
        assert len(lose) == 3
        assert full_small.filename in lose[0] and "larger file (3000 > 2000 bytes)" in lose[0]
        assert short.filename in lose[1] and "longer duration (2.0 s > 1.5 s)" in lose[1]
        assert partial.filename in lose[2] and "full beats partial" in lose[2]
        assert not any(p.name.endswith(".tombstone") for p in c.root(0).rglob("*"))

        code, out, err = await run_cli(capsys, "dupes", "--root", root, "desertbus", "source",
                                       "--hour", hour, "--tombstone-losers")
        assert code == 0, err
        assert "tombstoned 3 losing versions" in out
        for node in c.nodes:  # the agent propagates them; only the winner is listed
            for s in (full_small, partial, short):
                await wait_until(lambda: node.index.has(s, Kind.TOMBSTONE))
            assert sorted(await listing(node, full_big)) == sorted(
                [full_big.filename, alone.filename])

        code, out, _ = await run_cli(capsys, "dupes", "--root", root, "desertbus", "source",
                                     "--hour", hour)
        assert "0 start times with more than one version" in out


async def test_dupes_bad_arguments(tmp_path, capsys):
    code, _, err = await run_cli(capsys, "dupes", "--root", str(tmp_path), "desertbus",
                                 "source", "--hour", "2019-13-01T00")
    assert code == 2 and "not a real UTC hour" in err
    code, out, _ = await run_cli(capsys, "dupes", "--root", str(tmp_path), "desertbus",
                                 "source", "--hour", "2019-11-01T00")
    assert code == 1 and "no such hour directory" in out
    code, _, err = await run_cli(capsys, "dupes", "--root", str(tmp_path / "nope"), "desertbus",
                                 "source", "--hour", "2019-11-01T00")
    assert code == 2 and "not a directory" in err
