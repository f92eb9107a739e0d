"""Chat batches and extras files between real agents, real files, real HTTP on
loopback: two nodes whose chat archivers write and merge overlapping messages
converge; extras go both ways; a wubloader node (tests/legacy_standin.py) is pulled
from; a wubloader-style client is served; hostile listings write nothing outside.

The chat archiver is tests/chat_standin.py (our own code following wubloader's
write_batch and merge rules; checked against the real code by hand)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import httpx
import pytest
import trio

import chat_standin as wub
from conftest import peer_of, wait_until
from test_legacy_peers import legacy_node
from test_tools import run_cli

CHANNEL = "desertbus"
EXTRAS = ["emotes", "media"]


def recent_chat(count: int, minutes: int = 6, seed: int = 0) -> list:
    """(true time, text, id or None) of `count` messages over the last minutes, 2 h ago."""
    base = (int(time.time()) // 3600 - 2) * 3600 + 3600 - 180  # crosses an hour boundary
    return [(base + (i * minutes * 60) / count + 0.1, f"message {seed}-{i}",
             f"id-{seed}-{i}" if i % 4 else None) for i in range(count)]


def chat_dir(root: Path) -> Path:
    return root / CHANNEL / "chat"


def files_under(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def messages_in(root: Path) -> set:
    out = set()
    for data in files_under(chat_dir(root)).values():
        for line in data.decode().strip().split("\n"):
            msg = json.loads(line)
            out.add(msg["params"][1])
    return out


def one_file_per_minute(root: Path) -> bool:
    names = [p.name.split("-")[0] + p.parent.name for p in chat_dir(root).rglob("*.json")]
    return len(names) == len(set(names))


def sha_name(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest(), b"-_").decode().rstrip("=")


async def merge(root: Path) -> int:
    return await trio.to_thread.run_sync(wub.merge_once, str(chat_dir(root)))


async def round_between(a, b) -> None:
    await a.backfiller.round_all([b.url])
    await b.backfiller.round_all([a.url])


async def test_chat_archivers_on_two_nodes_converge(cluster_factory, caplog):
    caplog.set_level(logging.WARNING)
    chat = recent_chat(48)
    async with cluster_factory(2) as c:
        a, b = c.nodes
        ra, rb = c.root(0), c.root(1)
        # each node's archiver saw part of the chat (overlapping), at its own latency
        await trio.to_thread.run_sync(wub.write_minutes, str(chat_dir(ra)),
                                      wub.received(chat[:32], "a", 0))
        await trio.to_thread.run_sync(wub.write_minutes, str(chat_dir(rb)),
                                      wub.received(chat[16:], "b", 0.3))
        # pushed on appearance: every batch of each reaches the other, before any merge
        a_files, b_files = files_under(chat_dir(ra)), files_under(chat_dir(rb))
        await wait_until(lambda: all((chat_dir(rb) / rel).exists() for rel in a_files)
                         and all((chat_dir(ra) / rel).exists() for rel in b_files))
        a_files = files_under(chat_dir(ra))
        # A's merger replaces batches; the merged-away ones stay on B (no deletion is
        # replicated) and A does not pull them back
        await merge(ra)
        gone_here = set(a_files) - set(files_under(chat_dir(ra)))
        assert gone_here
        await a.backfiller.round_all([b.url])
        assert all((chat_dir(rb) / rel).exists() for rel in gone_here)
        assert not any((chat_dir(ra) / rel).exists() for rel in gone_here)
        # both mergers keep merging while segsync pushes and pulls: generations, settling
        for _ in range(30):
            await merge(ra)
            await merge(rb)
            await round_between(a, b)
            fa, fb = files_under(chat_dir(ra)), files_under(chat_dir(rb))
            if fa == fb and one_file_per_minute(ra) and not await merge(ra):
                break
        else:
            raise AssertionError("chat did not converge")
        everything = {text for _, text, _ in chat}
        assert messages_in(ra) == messages_in(rb) == everything
        assert not any(p.name.startswith(".segsync") for p in chat_dir(ra).rglob("*"))
        assert [p.name for p in chat_dir(ra).iterdir() if not p.is_dir()] == []
        # in sync: a round moves no chat bytes
        await a.backfiller.round_all([b.url])
        stats = a.file_puller.last_rounds[b.url]
        assert stats.sets_differing == 0 and stats.fetched == 0
        counts = a.files.counts()
        assert counts["chat_batches"] == len(files_under(chat_dir(ra)))
    assert not [r for r in caplog.records if "ends in neither" in r.getMessage()]


async def test_extras_pushed_both_ways_first_copy_wins(cluster_factory):
    async with cluster_factory(2, extras=EXTRAS) as c:
        a, b = c.nodes
        ra, rb = c.root(0), c.root(1)
        (ra / "emotes" / "25").mkdir(parents=True)
        (ra / "emotes" / "25" / "dark-1.0").write_bytes(b"png from a")
        (rb / "media" / "ab").mkdir(parents=True)
        (rb / "media" / "ab" / "clip.mp4").write_bytes(os.urandom(3 * 2**20))
        await wait_until(lambda: (rb / "emotes/25/dark-1.0").exists()
                         and (ra / "media/ab/clip.mp4").exists())
        assert (rb / "emotes/25/dark-1.0").read_bytes() == b"png from a"
        assert (ra / "media/ab/clip.mp4").read_bytes() == (rb / "media/ab/clip.mp4").read_bytes()
        # hidden and temp files are never pushed
        (ra / "emotes" / "25" / "dark-2.0.1f2e.temp").write_bytes(b"half")
        (ra / "emotes" / ".hidden").write_bytes(b"h")
        # the same metadata name with other bytes on each node: neither is replaced
        (ra / "media" / "m").mkdir()
        (rb / "media" / "m").mkdir()
        (ra / "media/m/x.metadata.json").write_text('{"by": "a"}')
        (rb / "media/m/x.metadata.json").write_text('{"by": "b"}')
        (ra / "emotes" / "26").mkdir()
        (ra / "emotes/26/light-1.0").write_bytes(b"last")
        await wait_until(lambda: (rb / "emotes/26/light-1.0").exists())
        await round_between(a, b)
        assert (ra / "media/m/x.metadata.json").read_text() == '{"by": "a"}'
        assert (rb / "media/m/x.metadata.json").read_text() == '{"by": "b"}'
        assert not (rb / "emotes/25/dark-2.0.1f2e.temp").exists()
        assert not (rb / "emotes/.hidden").exists()
        # in sync (paths, not bytes): a round compares one digest per set
        await a.backfiller.round_all([b.url])
        stats = a.file_puller.last_rounds[b.url]
        assert stats.sets_differing == 0 and stats.fetched == 0
        # a node that lost files pulls them back (anti-entropy), verified
        os.remove(ra / "emotes/26/light-1.0")
        await wait_until(lambda: not a.files.index.has("extras", "emotes", "26/light-1.0"))
        await a.backfiller.round_all([b.url])
        assert (ra / "emotes/26/light-1.0").read_bytes() == b"last"
        assert a.files.counts()["extras_files"] == 4


def wubloader_chat_and_extras(root: Path) -> dict:
    """A wubloader node's chat (batches, a tombstoned one, an archiver temp file)
    and extras (with hidden and media temp files)."""
    chat = recent_chat(12, minutes=3, seed=9)
    written = wub.write_minutes(str(chat_dir(root)), wub.received(chat, "w", 0))
    tombstoned = Path(written[0])
    tombstoned.with_suffix(".tombstone").touch()
    (Path(written[1]).parent / (Path(written[1]).name + ".5e1d.temp")).write_bytes(b"{")
    for rel, data in (("emotes/1/dark-1.0", b"e1"), ("emotes/1/dark-2.0", b"e2"),
                      ("media/aa/v.mp4", b"video"), ("media/aa/v.metadata.json", b"{}"),
                      ("media/.9c0d.temp", b"half"), ("emotes/.hidden", b"h")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {"batches": [Path(p) for p in written], "tombstoned": tombstoned}


async def test_pull_chat_and_extras_from_a_wubloader_node(cluster_factory, tmp_path):
    with legacy_node(tmp_path / "wub") as w:
        made = wubloader_chat_and_extras(w.root)
        async with cluster_factory(1, connect=False, backfill=False, extras=EXTRAS) as c:
            node = c.nodes[0]
            await node.set_peers([w.url])
            [result] = await node.backfiller.round_all([w.url])
            assert result.ok, result.error
            root = c.root(0)
            want = {k: v for k, v in files_under(w.root).items()
                    if not k.endswith(".temp") and "/." not in "/" + k
                    and k != str(made["tombstoned"].relative_to(w.root))}
            got = files_under(root)
            assert {k: v for k, v in got.items() if not k.startswith(".")} == want
            stats = node.file_puller.last_rounds[w.url]
            assert stats.tombstones == 1 and stats.refused == 0 and not stats.errors
            # in sync: lists again, fetches nothing
            [again] = await node.backfiller.round_all([w.url])
            assert node.file_puller.last_rounds[w.url].fetched == 0
            assert w.pushes() == []


async def test_a_batch_merged_away_before_its_download_is_not_an_error(cluster_factory,
                                                                       tmp_path):
    with legacy_node(tmp_path / "wub") as w0:
        made = wubloader_chat_and_extras(w0.root)
    victim = made["batches"][2].name
    with legacy_node(tmp_path / "wub", "--delete-on-list", victim) as w:
        async with cluster_factory(1, connect=False, backfill=False) as c:
            node = c.nodes[0]
            await node.set_peers([w.url])
            [result] = await node.backfiller.round_all([w.url])
            stats = node.file_puller.last_rounds[w.url]
            assert result.ok, result.error
            assert stats.gone == 1 and stats.failed == 0 and not stats.errors
            assert not list(c.root(0).rglob(victim))


def wubloader_style_backfill(url: str, dest: Path, channel: str, extras: list[str]) -> int:
    """What wubloader's backfiller does against a node (its /files listings of the
    `chat` quality, GET /extras/DIR and GET /segments/...), written for this test."""
    copied = 0
    with httpx.Client(base_url=url) as http:
        for hour in http.get(f"/files/{channel}/chat").json():
            for name in http.get(f"/files/{channel}/chat/{hour}",
                                 params={"tombstones": "true"}).json():
                path = dest / channel / "chat" / hour / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if name.endswith(".tombstone"):
                    path.touch()
                    continue
                r = http.get(f"/segments/{channel}/chat/{hour}/{name}")
                r.raise_for_status()
                assert sha_name(r.content) == name.split("-", 1)[1][:-5]
                path.write_bytes(r.content)
                copied += 1
        for d in extras:
            for rel in http.get(f"/extras/{d}").json():
                r = http.get(f"/segments/{d}/{rel}")
                r.raise_for_status()
                (dest / d / rel).parent.mkdir(parents=True, exist_ok=True)
                (dest / d / rel).write_bytes(r.content)
                copied += 1
    return copied


async def test_served_to_a_wubloader_backfiller(cluster_factory, tmp_path):
    source = tmp_path / "source"
    wubloader_chat_and_extras(source)
    async with cluster_factory(1, connect=False, extras=EXTRAS) as c:
        node = c.nodes[0]
        root = c.root(0)
        for rel, data in files_under(source).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        await node.files.local.rescan(announce_new=False)
        async with httpx.AsyncClient(base_url=node.url) as http:
            r = await http.get("/extras/emotes")
            assert r.status_code == 200 and sorted(r.json()) == ["1/dark-1.0", "1/dark-2.0"]
            assert (await http.get("/extras/.segsync")).status_code == 403
            assert (await http.get("/extras/unknown")).json() == []
            r = await http.get(f"/files/{CHANNEL}/chat")
            assert r.json() == sorted(p.name for p in chat_dir(root).iterdir())
        dest = tmp_path / "wubloader"
        copied = await trio.to_thread.run_sync(wubloader_style_backfill, node.url, dest,
                                               CHANNEL, EXTRAS)
        assert copied > 0
        want = {k: v for k, v in files_under(root).items()
                if not k.endswith(".temp") and "/." not in "/" + k and not k.startswith(".")}
        assert files_under(dest) == {k: v for k, v in want.items()
                                     if not k.endswith(".json") or (root / k).with_suffix(
                                         ".tombstone").exists() is False}


async def test_hostile_listings_write_nothing_outside(cluster_factory, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    outside = tmp_path / "outside"
    outside.mkdir()
    listing = tmp_path / "hostile.json"
    listing.write_text(json.dumps(["../../outside/evil", "/abs/evil", "a\\b", "ok/file",
                                   "link/evil", "x/\x00y", "x/../../../evil", ".hidden",
                                   "m/.3f.temp"]))
    with legacy_node(tmp_path / "wub", "--extras-listing", f"emotes={listing}") as w:
        (w.root / "emotes" / "ok").mkdir(parents=True)
        (w.root / "emotes" / "ok" / "file").write_bytes(b"fine")
        (w.root / "emotes" / "link").mkdir()
        (w.root / "emotes" / "link" / "evil").write_bytes(b"evil")
        async with cluster_factory(1, connect=False, backfill=False, extras=EXTRAS) as c:
            node = c.nodes[0]
            root = c.root(0)
            (root / "emotes").mkdir()
            os.symlink(outside, root / "emotes" / "link")  # a symlink in the local tree
            await node.set_peers([w.url])
            [result] = await node.backfiller.round_all([w.url])
            stats = node.file_puller.last_rounds[w.url]
            assert (root / "emotes/ok/file").read_bytes() == b"fine"
            assert list(outside.iterdir()) == []
            assert not (tmp_path / "evil").exists() and not Path("/abs/evil").exists()
            assert stats.refused == 5 and stats.failed == 1  # link/evil: refused on write
            logged = " ".join(r.getMessage() for r in caplog.records)
            for why in ("'..'", "absolute", "backslash", "NUL", "symlink"):
                assert why in logged, why


async def test_one_shot_backfill_with_extras(tmp_path, capsys):
    with legacy_node(tmp_path / "wub") as w:
        wubloader_chat_and_extras(w.root)
        dest = tmp_path / "new"
        dest.mkdir()
        code, out, err = await run_cli(capsys, "backfill", "--root", str(dest), "--from", w.url,
                                       "--extras", "emotes,media")
        assert code == 0, err
        assert (dest / "emotes/1/dark-2.0").read_bytes() == b"e2"
        assert (dest / "media/aa/v.mp4").read_bytes() == b"video"
        assert len(list(chat_dir(dest).rglob("*.json"))) >= 1
        assert not list(dest.rglob("*.temp"))


def test_extras_flags_and_toml(tmp_path):
    from agent.commands.cli import config_from_args, make_parser
    from agent.config import ConfigError, build_config, load_toml

    args = make_parser().parse_args(["run", "--root", str(tmp_path), "--extras", "emotes,media",
                                     "--extras", "emotes", "--extras", " more "])
    assert config_from_args(args).extras == ["emotes", "media", "more"]
    toml = tmp_path / "segsync.toml"
    toml.write_text('extras = ["emotes", "media"]\n')
    assert build_config({"root": tmp_path, **load_toml(toml)}).extras == ["emotes", "media"]
    for bad in ("../x", ".segsync", "chat", "a/b", ["x", 3]):
        with pytest.raises(ConfigError) as info:
            build_config({"root": tmp_path, "extras": bad if isinstance(bad, list) else [bad]})
        assert "extras" in str(info.value)


async def test_chat_files_counted_apart_and_never_warned_about(cluster_factory, tmp_path,
                                                                caplog):
    from agent.commands.status_view import render_status

    caplog.set_level(logging.INFO)
    root = tmp_path / "node0"
    made = wubloader_chat_and_extras(root)
    (chat_dir(root) / made["batches"][0].parent.name / "odd.json").write_text("{}")
    async with cluster_factory(1, connect=False, extras=EXTRAS) as c:
        node = c.nodes[0]
        status = node.status.report({})
        batches = len(made["batches"])
        assert (status.chat_batches, status.chat_tombstones, status.extras_files) == (
            batches, 1, 4)
        assert status.segments == 0
        text = render_status(status)
        assert f"{batches} chat batches" in text and "4 extras files" in text
        async with httpx.AsyncClient(base_url=node.url) as http:
            metrics = (await http.get("/metrics")).text
            state = (await http.get("/dashboard/state")).json()
        assert f'segsync_fileset_files{{kind="chat_batches"}} {batches}.0' in metrics
        assert state["extras_files"] == 4
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [w for w in warned if "chat" in w or ".temp" in w], warned


async def test_hostile_requests_to_the_file_endpoints(cluster_factory, tmp_path):
    from protocol import endpoints as ep

    secret = b"secret bytes 7d1e"
    (tmp_path / "canary.txt").write_bytes(secret)
    async with cluster_factory(1, connect=False, extras=EXTRAS) as c:
        node, root = c.nodes[0], c.root(0)
        (root / "emotes" / "1").mkdir(parents=True)
        (root / "emotes" / "1" / "dark-1.0").write_bytes(b"ok")
        os.symlink(tmp_path / "canary.txt", root / "emotes" / "1" / "sneaky")
        await node.files.local.rescan(announce_new=False)
        data = b"evil"
        sha = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
        async with httpx.AsyncClient(base_url=node.url) as http:
            for path in ("/segments/emotes/1/sneaky", "/segments/emotes/..%2f..%2fcanary.txt",
                         "/segments/emotes/%2e%2e/%2e%2e/canary.txt",
                         "/v1/file/extras/emotes/1/sneaky", "/v1/file/extras/emotes/%2e%2e/x",
                         "/v1/file/extras/emotes/1%2f..%2f..%2f..%2fcanary.txt"):
                r = await http.get(path)
                assert r.status_code in (400, 404), (path, r.status_code)
                assert secret not in r.content
            for path in ("/v1/file/extras/emotes/..%2f..%2fevil", "/v1/file/extras/emotes/%2fabs",
                         "/v1/file/extras/emotes/a%5cb", "/v1/file/extras/emotes/1/sneaky/x",
                         "/v1/file/extras/notmine/x", "/v1/file/chat/desertbus/x.json"):
                r = await http.put(path, content=data,
                                   headers={ep.FILE_SHA256_HEADER: sha})
                assert r.status_code in (400, 404), (path, r.status_code)
            assert (await http.get("/extras/%2e%2e")).status_code == 403
            assert sorted((await http.get("/extras/emotes")).json()) == ["1/dark-1.0"]
            r = await http.put("/v1/file/extras/emotes/2/x", content=data,
                               headers={ep.FILE_SHA256_HEADER: sha[:-1] + "A"})
            assert r.status_code == 422
            r = await http.put("/v1/file/extras/emotes/2/x", content=data,
                               headers={ep.FILE_SHA256_HEADER: sha})
            assert r.status_code == 200
        assert (root / "emotes/2/x").read_bytes() == data
        assert (tmp_path / "canary.txt").read_bytes() == secret
        assert not (tmp_path / "evil").exists() and not (root / "evil").exists()


async def test_chat_tombstone_travels_and_hides_its_batch(cluster_factory):
    async with cluster_factory(2) as c:
        a, b = c.nodes
        ra, rb = c.root(0), c.root(1)
        [path] = await trio.to_thread.run_sync(
            wub.write_minutes, str(chat_dir(ra)), wub.received(recent_chat(1), "a", 0))
        rel = Path(path).relative_to(ra)
        await wait_until(lambda: (rb / rel).exists())
        (ra / rel).with_suffix(".tombstone").touch()  # an operator hides the batch on A
        await wait_until(lambda: (rb / rel).with_suffix(".tombstone").exists())
        hour, name = rel.parts[-2], rel.parts[-1]
        async with httpx.AsyncClient(base_url=b.url) as http:
            await wait_until(lambda: b.files.index.has("chat", CHANNEL,
                                                       f"{hour}/{name[:-5]}.tombstone"))
            r = await http.get(f"/segments/{CHANNEL}/chat/{hour}/{name}")
            assert r.status_code == 404
            names = (await http.get(f"/files/{CHANNEL}/chat/{hour}",
                                    params={"tombstones": "true"})).json()
            assert names == [name[:-5] + ".tombstone"]
        # a third node that never had it gets the tombstone, never the batch
        c3 = await c.start_node()
        await c3.backfiller.round_all([a.url])
        r3 = c.root(2)
        assert (r3 / rel).with_suffix(".tombstone").exists() and not (r3 / rel).exists()


async def test_chat_has_no_recent_window(cluster_factory, tmp_path):
    with legacy_node(tmp_path / "wub") as w:
        now = time.time()
        written = wub.write_minutes(str(chat_dir(w.root)), wub.received(
            [(now - 1, "just said", "id-now")], "w", 0))
        async with cluster_factory(1, connect=False, backfill=False,
                                   recent_window=600) as c:
            node = c.nodes[0]
            await node.set_peers([w.url])
            [result] = await node.backfiller.round_all([w.url])
            assert result.ok, result.error
            rel = Path(written[0]).relative_to(w.root)
            assert (c.root(0) / rel).read_bytes() == Path(written[0]).read_bytes()
