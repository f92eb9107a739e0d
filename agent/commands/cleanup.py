"""The operator's manual clean-up jobs: tombstone, purge, dupes.

segsync never deletes a segment on its own; these tools are how an operator does it,
safely. The decisions live in `protocol.cleanup`; this module reads the archive, asks
the agents over HTTP and changes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import trio

from protocol.cleanup import PurgeDecision, duplicate_groups, purge_decision
from protocol.errors import SegmentNameError
from protocol.names import Kind, SegmentName, parse_filename, parse_segment_path
from protocol.peerkind import PeerKind
from protocol.selection import Candidate

from ..archive.store import Store, fsync_dir
from ..peers.client import ClientFactory, PeerClient, PeerError
from ..peers.legacy_client import LegacyClient
from ..peers.tls import ClientTls
from .status_view import fetch_status

# ---- tombstone ----

def locate_segment(path: str | os.PathLike) -> tuple[Path, SegmentName]:
    """(archive root, name) of the segment file at `path`; SegmentNameError says why not.

    The last four components must be CHANNEL/QUALITY/HOUR/NAME.ts; whatever is above
    them is the archive root.
    """
    absolute = Path(os.path.abspath(path))
    parts = absolute.parts
    if len(parts) < 5:
        raise SegmentNameError(f"{path}: not ROOT/CHANNEL/QUALITY/HOUR/NAME.ts")
    try:
        name = parse_segment_path("/".join(parts[-4:]))
    except SegmentNameError as e:
        raise SegmentNameError(f"{path}: not a segment: {e}") from None
    if not name.replicable:
        raise SegmentNameError(
            f"{path}: a temp segment is still being written and is never replicated; "
            "nothing to tombstone")
    return Path(*parts[:-4]), name


@dataclass
class TombstoneRequest:
    given: str
    root: Path
    name: SegmentName


def check_tombstone_paths(paths: list[str], missing_ok: bool) -> tuple[list[TombstoneRequest],
                                                                      list[str]]:
    """Validate every path first: (requests, refusals)."""
    requests, refusals = [], []
    for given in paths:
        try:
            root, name = locate_segment(given)
        except SegmentNameError as e:
            refusals.append(str(e))
            continue
        target = root / name.path
        if target.is_dir() or (not target.exists() and not missing_ok):
            why = "is a directory" if target.is_dir() else \
                "no such file (pass --missing-ok to tombstone a segment this node lacks)"
            refusals.append(f"{given}: {why}")
            continue
        requests.append(TombstoneRequest(given, root, name))
    return requests, refusals


def tombstone_paths(paths: list[str], out: TextIO, err: TextIO, missing_ok: bool = False) -> int:
    """`segsync tombstone`: all paths are checked before any tombstone is created."""
    requests, refusals = check_tombstone_paths(paths, missing_ok)
    if refusals:
        for line in refusals:
            print(f"segsync tombstone: refusing {line}", file=err)
        print("segsync tombstone: nothing was tombstoned", file=err)
        return 2
    for r in requests:
        created = Store(r.root).create_tombstone(r.name)
        state = "tombstoned" if created else "already tombstoned"
        print(f"{state}: {r.root / r.name.format(Kind.TOMBSTONE)}", file=out)
    return 0


# ---- purge ----

def tombstoned_segments(store: Store) -> list[SegmentName]:
    """Local segments hidden by a local tombstone: the only ones purge may delete."""
    out = []
    for channel, quality, hour, _ in store.scan():
        for filename in store.list_hour(channel, quality, hour).hidden:
            out.append(parse_filename(channel, quality, hour, filename)[0])
    return out


async def ask_peer(client: PeerClient | LegacyClient, names: list[SegmentName]
                   ) -> dict[str, bool | str]:
    """segment path -> does the peer hold its tombstone (or why we could not tell).

    One listing per hour; after the first failure the peer is not asked again.
    """
    answers: dict[str, bool | str] = {}
    by_hour: dict[tuple[str, str, str], list[SegmentName]] = {}
    for name in names:
        by_hour.setdefault((name.channel, name.quality, name.hour), []).append(name)
    failure: str | None = None
    for (channel, quality, hour), group in sorted(by_hour.items()):
        if failure is None:
            try:
                held = set((await client.listing(channel, quality, hour)).names)
            except PeerError as e:
                failure = str(e)
        for name in group:
            answers[name.path] = failure if failure else name.tombstone_filename in held
    return answers


async def plan_purge(root: Path, node_url: str, token: str | None, timeout: float = 10.0,
                     tls: ClientTls | None = None) -> tuple[list[str], list[PurgeDecision]]:
    """(peers, decisions) for every tombstoned segment under `root`."""
    store = Store(root)
    names = await trio.to_thread.run_sync(tombstoned_segments, store)
    status = await fetch_status(node_url, token, timeout, tls)
    peers = [p.url for p in status.peers]
    wubloader = {p.url for p in status.peers if p.kind == PeerKind.WUBLOADER.value}
    answers: dict[str, dict[str, bool | str]] = {}

    clients = ClientFactory(token, "segsync-purge", timeout=timeout, tls=tls)

    async def one(url: str) -> None:
        # a wubloader node is asked its hour listings through its read API
        make = clients.wubloader_client if url in wubloader else clients.client
        async with make(url, concurrency=1) as client:
            answers[url] = await ask_peer(client, names)

    if names:
        async with trio.open_nursery() as nursery:
            for url in peers:
                nursery.start_soon(one, url)
    decisions = [
        purge_decision(name.path, peers, {url: answers[url][name.path] for url in peers})
        for name in names
    ]
    return peers, decisions


def delete_segment(root: Path, segment_path: str) -> str:
    """Unlink a tombstoned .ts, re-checking its tombstone first.

    Returns 'deleted', 'gone' (someone else removed it) or 'untombstoned' (kept).
    """
    name = parse_segment_path(segment_path)
    store = Store(root)
    if not store.has_tombstone(name):
        return "untombstoned"
    try:
        os.unlink(store.path_of(name))
    except FileNotFoundError:
        return "gone"
    fsync_dir(store.path_of(name).parent)
    return "deleted"


async def purge(root: Path, node_url: str, token: str | None, dry_run: bool,
                out: TextIO, tls: ClientTls | None = None) -> int:
    """`segsync purge`: delete what is safe, say what was kept and why."""
    peers, decisions = await plan_purge(root, node_url, token, tls=tls)
    print(f"{len(decisions)} tombstoned segments under {root}; "
          f"peers of {node_url}: {', '.join(peers) or 'none'}", file=out)
    deleted = kept = 0
    for d in decisions:
        if not d.delete:
            kept += 1
            print(f"kept          {d.segment_path}  ({d.reason})", file=out)
            continue
        if dry_run:
            deleted += 1
            print(f"would delete  {d.segment_path}  ({d.reason})", file=out)
            continue
        result = await trio.to_thread.run_sync(delete_segment, root, d.segment_path)
        if result == "deleted":
            deleted += 1
            print(f"deleted       {d.segment_path}  ({d.reason})", file=out)
        elif result == "untombstoned":
            kept += 1
            print(f"kept          {d.segment_path}  (its local tombstone vanished)", file=out)
    verb = "would delete" if dry_run else "deleted"
    print(f"{verb} {deleted}, kept {kept}", file=out)
    return 0


# ---- dupes ----

def hour_candidates(store: Store, channel: str, quality: str, hour: str) -> list[Candidate]:
    out = []
    for filename in store.list_hour(channel, quality, hour).segments:
        name, _ = parse_filename(channel, quality, hour, filename)
        try:
            out.append(Candidate(name, store.segment_size(name)))
        except FileNotFoundError:
            continue
    return out


def dupes(root: Path, channel: str, quality: str, hour: str, tombstone_losers: bool,
          out: TextIO) -> int:
    """`segsync dupes`: versions sharing a start time, which one wins, and why."""
    store = Store(root)
    hour_dir = store.hour_dir(channel, quality, hour)  # validates the three components
    if not hour_dir.is_dir():
        print(f"no such hour directory: {hour_dir}", file=out)
        return 1
    candidates = hour_candidates(store, channel, quality, hour)
    groups = duplicate_groups(candidates)
    print(f"{channel}/{quality}/{hour}: {len(candidates)} visible segments, "
          f"{len(groups)} start times with more than one version", file=out)
    tombstoned = 0
    for g in groups:
        print(f"{g.start:%M:%S.%f}  {1 + len(g.losers)} versions", file=out)
        print(f"  keep  {g.keep.name.filename}  {g.keep.size} bytes", file=out)
        for c, why in g.losers:
            print(f"  lose  {c.name.filename}  {c.size} bytes  (kept one wins: {why})", file=out)
            if tombstone_losers and store.create_tombstone(c.name):
                tombstoned += 1
                print("        tombstoned", file=out)
    if tombstone_losers:
        print(f"tombstoned {tombstoned} losing versions; the running agent propagates them",
              file=out)
    elif groups:
        print("run again with --tombstone-losers to tombstone the losing versions", file=out)
    return 0
