"""`segsync demo`: three agents on loopback, a synthetic downloader, one tombstone.

Everything real: three Nodes serving HTTP on 127.0.0.1 ports, a downloader writing
real-format segments (random bytes, correct names and hashes, temp name then rename)
into node a's archive. The terminal shows each segment reaching each peer with its
latency, then a tombstone created on node c reaching every node and its segment
vanishing from every node's /files listing, then a summary table. Each node's
dashboard URL is printed first; with `keep_running` the agents stay up after the
summary (a segment every 2 s, in real time, and a tombstone now and then) until
Ctrl-C, so a newcomer can watch it all on a dashboard. All of it lives in a temporary
directory that is removed at the end, also after Ctrl-C.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TextIO

import httpx
import trio

from protocol.hashing import hash_bytes
from protocol.names import Kind, SegmentName, downloader_temp_filename, make_segment_name

from ..config import build_config
from ..node import Node
from ..peers.peer_set import Peer

CHANNEL, QUALITY = "demo", "source"
NODE_NAMES = ("a", "b", "c")
DOWNLOADER, TOMBSTONER = 0, 2  # node a gets the segments, node c the operator's tombstone
SEGMENT_SECONDS = 2
MIN_SIZE, MAX_SIZE = 64 * 1024, 384 * 1024
POLL = 0.002
DRAIN_TIMEOUT = 10.0  # after the downloader stops: time left for copies and the tombstone
KEEP_TOMBSTONE_FIRST = 5.0  # kept running: seconds until the first tombstone, then
KEEP_TOMBSTONE_EVERY = 30.0  # one every this many seconds


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None when there are no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q / 100)) - 1]


def short(name: SegmentName) -> str:
    """The file name with its hash cut to 8 characters: enough to tell segments apart."""
    return f"{name.start:%M:%S.%f}-{name.duration:f}-{name.type}-{name.hash_text[:8]}…"


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


@dataclass
class Written:
    number: int
    name: SegmentName
    size: int
    at: float  # trio clock, just after the rename


def _on_every_node(per_node: dict) -> float | None:
    """The latest of the nodes' latencies, or None while any node has none yet."""
    values = list(per_node.values())
    if not values or any(v is None for v in values):
        return None
    return max(values)


@dataclass
class DemoResult:
    seconds: float = 0.0
    written: list[Written] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)  # peer -> seconds
    tombstoned: Written | None = None
    tombstone_reached: dict[str, float | None] = field(default_factory=dict)
    segment_gone: dict[str, float | None] = field(default_factory=dict)
    interrupted: bool = False
    directory: str = ""
    # with keep_running: whether the timed demo went well, judged at its summary. The
    # run goes on after it, and the segment written just before Ctrl-C may still be
    # on its way to the peers: that is no failure of the demo
    summary_ok: bool | None = None

    @property
    def expected_copies(self) -> int:
        return len(self.written) * len(self.latencies)

    @property
    def delivered(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def all_latencies(self) -> list[float]:
        return [x for v in self.latencies.values() for x in v]

    @property
    def tombstone_latency(self) -> float | None:
        """Until the tombstone was on every node (None if it never was)."""
        return _on_every_node(self.tombstone_reached)

    @property
    def gone_latency(self) -> float | None:
        """Until the segment was gone from every node's listing (None if it never was)."""
        return _on_every_node(self.segment_gone)

    @property
    def ok(self) -> bool:
        return (not self.interrupted and bool(self.written)
                and self.delivered == self.expected_copies
                and self.tombstone_latency is not None and self.gone_latency is not None)


class Demo:
    def __init__(self, seconds: float = 20.0, rate: float = 4.0, out: TextIO | None = None,
                 base_dir: str | None = None, rng: random.Random | None = None,
                 keep_running: bool = False) -> None:
        import sys

        self.seconds = seconds
        self.rate = rate
        self.keep_running = keep_running
        self.keeping = False  # the timed part is over, the agents run on until Ctrl-C
        self.tombstones = 0
        self.tombstoned: set[int] = set()  # segment numbers
        self.out = out or sys.stdout
        self.base_dir = base_dir
        self.rng = rng or random.Random()
        self.result = DemoResult()
        self.nodes: list[Node] = []
        self.pending: dict[tuple[int, int], Written] = {}  # (segment number, node) -> segment
        self.cancel_scope = trio.CancelScope()
        self.started = 0.0

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def stamp(self) -> str:
        return f"{trio.current_time() - self.started:7.2f}s"

    def interrupt(self) -> None:
        """Ctrl-C: stop now, still stop the agents, print the summary, remove the files.
        Once kept running, Ctrl-C is the normal end: the run counts as not interrupted."""
        if not self.keeping:
            self.result.interrupted = True
        self.cancel_scope.cancel()

    # ---- the whole run ----

    async def run(self) -> DemoResult:
        self.started = trio.current_time()
        with tempfile.TemporaryDirectory(prefix="segsync-demo-", dir=self.base_dir) as tmp:
            self.result.directory = tmp
            async with trio.open_nursery() as nursery:
                try:
                    with self.cancel_scope:
                        await self._start_nodes(nursery, Path(tmp))
                        await self._scenario()
                        if self.keep_running and not self.result.interrupted:
                            self.result.seconds = trio.current_time() - self.started
                            self.say(self.summary())
                            self.result.summary_ok = self.result.ok
                            await self._keep_running()
                finally:
                    for node in self.nodes:
                        node.stop()
        if self.keeping:
            self.say(f"\nstopped after {trio.current_time() - self.started:.1f} s: "
                     f"{len(self.result.written)} segments written, "
                     f"{self.tombstones} tombstones")
        else:
            self.result.seconds = trio.current_time() - self.started
            self.say(self.summary())
        self.say(f"removed {self.result.directory}")
        return self.result

    async def _start_nodes(self, nursery: trio.Nursery, base: Path) -> None:
        for name in NODE_NAMES:
            root = base / f"node-{name}"
            root.mkdir()
            node = Node(build_config({"root": root, "listen": "127.0.0.1:0", "node_name": name}))
            self.nodes.append(node)
            await nursery.start(node.run)
        for node in self.nodes:
            await node.set_peers([Peer.from_url(o.url, o.config.node_name)
                                  for o in self.nodes if o is not node])
        for i, name in enumerate(NODE_NAMES):
            if i != DOWNLOADER:
                self.result.latencies[name] = []
        self.say(f"segsync demo: {len(self.nodes)} agents on loopback, archives under "
                 f"{base}")
        for i, node in enumerate(self.nodes):
            role = {DOWNLOADER: "  (the downloader writes here)",
                    TOMBSTONER: "  (the operator tombstones here)"}.get(i, "")
            self.say(f"  {node.config.node_name}  dashboard {node.url}/{role}")
        if not self.keep_running:
            self.say("  (segsync demo --keep-running keeps the agents up after the summary, "
                     "to watch a dashboard)")
        self.say(f"writing ~{self.rate:g} segments/s for {self.seconds:g} s; "
                 f"one line per segment reaching a peer\n")
        self.say(f"{'time':>8}  {'seg':>5}  peer  {'latency':>10}  segment")

    async def _scenario(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_arrivals)
            tombstone_done = trio.Event()

            async def tombstone_task() -> None:
                await trio.sleep(self.seconds / 2)
                await self._tombstone()
                tombstone_done.set()

            nursery.start_soon(tombstone_task)
            await self._download(self.started + self.seconds)
            with trio.move_on_after(DRAIN_TIMEOUT):
                while self.pending:
                    await trio.sleep(POLL)
                await tombstone_done.wait()
            nursery.cancel_scope.cancel()

    # ---- the synthetic downloader ----

    def _make_segment(self, number: int, start: dt.datetime) -> tuple[SegmentName, bytes]:
        data = self.rng.randbytes(self.rng.randint(MIN_SIZE, MAX_SIZE))
        name = make_segment_name(CHANNEL, QUALITY, start, f"{SEGMENT_SECONDS}.0", "full",
                                 hash_bytes(data))
        return name, data

    @staticmethod
    def _write_like_a_downloader(root: Path, name: SegmentName, data: bytes) -> None:
        """Temp-type name first (never replicated), then rename to the final name."""
        final = root / name.path
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.parent / downloader_temp_filename(name, name.hash_text)
        with open(temp, "wb") as f:
            view = memoryview(data)
            while view:
                view = view[f.write(view):]
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, final)

    async def _write_segment(self, root: Path, number: int, start: dt.datetime) -> None:
        """Segment `number` lands on the downloading node; every other node now awaits it."""
        name, data = self._make_segment(number, start)
        await trio.to_thread.run_sync(self._write_like_a_downloader, root, name, data)
        seg = Written(number, name, len(data), trio.current_time())
        self.result.written.append(seg)
        for j in range(len(self.nodes)):
            if j != DOWNLOADER:
                self.pending[(number, j)] = seg

    async def _download(self, until: float) -> None:
        root = Path(self.nodes[DOWNLOADER].config.root)
        count = max(1, int(self.seconds * self.rate))
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        first_start = now - dt.timedelta(seconds=SEGMENT_SECONDS * count)
        number = 0
        next_at = trio.current_time()
        while trio.current_time() < until:
            number += 1
            start = first_start + dt.timedelta(seconds=SEGMENT_SECONDS * (number - 1))
            await self._write_segment(root, number, start)
            next_at += 1 / self.rate
            await trio.sleep_until(max(next_at, trio.current_time()))

    async def _watch_arrivals(self) -> None:
        while True:
            now = trio.current_time()
            for key, seg in sorted(self.pending.items()):
                j = key[1]
                node = self.nodes[j]
                if node.index.has(seg.name, Kind.SEGMENT):
                    del self.pending[key]
                    latency = now - seg.at
                    self.result.latencies[node.config.node_name].append(latency)
                    self.say(f"{self.stamp()}  #{seg.number:<4}  {node.config.node_name:4}  "
                             f"{ms(latency):>7} ms  {short(seg.name)}  {seg.size // 1024} KiB")
            await trio.sleep(POLL)

    # ---- kept running ----

    async def _keep_running(self) -> None:
        """Until Ctrl-C: a segment every SEGMENT_SECONDS in real time (start times go
        on from the last one), their arrivals, and a tombstone now and then."""
        self.keeping = True
        self.say(f"\nthe agents keep running: a new segment every {SEGMENT_SECONDS} s, a "
                 f"tombstone in {KEEP_TOMBSTONE_FIRST:g} s and then every "
                 f"{KEEP_TOMBSTONE_EVERY:g} s.\nWatch them on a dashboard above; Ctrl-C stops "
                 f"and removes everything.\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_arrivals)

            async def tombstones() -> None:
                await trio.sleep(KEEP_TOMBSTONE_FIRST)
                while True:
                    await self._tombstone()
                    await trio.sleep(KEEP_TOMBSTONE_EVERY)

            nursery.start_soon(tombstones)
            await self._download_in_real_time()

    async def _download_in_real_time(self) -> None:
        """Like a live downloader: each segment is written once its 2 s are over."""
        root = Path(self.nodes[DOWNLOADER].config.root)
        last = self.result.written[-1] if self.result.written else None
        start = (last.name.start + dt.timedelta(seconds=SEGMENT_SECONDS) if last
                 else dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
        number = last.number if last else 0
        while True:
            ends = start + dt.timedelta(seconds=SEGMENT_SECONDS)
            wait = (ends - dt.datetime.now(dt.timezone.utc)).total_seconds()
            await trio.sleep(max(0.0, wait))
            number += 1
            await self._write_segment(root, number, start)
            start = ends

    # ---- the operator's tombstone ----

    async def _tombstone(self) -> None:
        """Tombstone the oldest segment that every peer has, on node c, like an operator."""
        while True:
            arrived = {n for (n, _) in self.pending}
            done = [w for w in self.result.written if w.number not in arrived
                    and w.number not in self.tombstoned]
            if done:
                break
            await trio.sleep(POLL)
        seg = done[0]
        self.tombstoned.add(seg.number)
        self.tombstones += 1
        reached: dict[str, float | None] = {}  # node -> latency (None: not yet)
        gone: dict[str, float | None] = {}
        if self.result.tombstoned is None:  # the first is the summary's
            self.result.tombstoned = seg
            reached, gone = self.result.tombstone_reached, self.result.segment_gone
        node = self.nodes[TOMBSTONER]
        path = Path(node.config.root) / seg.name.format(Kind.TOMBSTONE)
        await trio.to_thread.run_sync(path.touch)
        created = trio.current_time()
        self.say(f"\n{self.stamp()}  tombstone for #{seg.number} ({short(seg.name)}) created on "
                 f"{node.config.node_name}")
        async with httpx.AsyncClient(timeout=5.0) as http:
            async with trio.open_nursery() as nursery:
                for other in self.nodes:
                    nursery.start_soon(self._await_tombstone, other, seg, created, reached)
                    nursery.start_soon(self._await_gone, http, other, seg, created, gone)
        self.say("")

    async def _await_tombstone(self, node: Node, seg: Written, created: float,
                               reached: dict[str, float | None]) -> None:
        name = node.config.node_name
        reached[name] = None
        with trio.move_on_after(DRAIN_TIMEOUT):
            while not node.index.has(seg.name, Kind.TOMBSTONE):
                await trio.sleep(POLL)
            latency = reached[name] = trio.current_time() - created
            self.say(f"{self.stamp()}  tombstone on {name} after {ms(latency)} ms")

    async def _await_gone(self, http: httpx.AsyncClient, node: Node, seg: Written,
                          created: float, gone: dict[str, float | None]) -> None:
        """Poll the node's compat /files listing until the segment is no longer listed."""
        name = node.config.node_name
        gone[name] = None
        url = f"{node.url}/files/{CHANNEL}/{QUALITY}/{seg.name.hour}"
        with trio.move_on_after(DRAIN_TIMEOUT):
            while True:
                response = await http.get(url)
                if response.status_code == 200 and seg.name.filename not in response.json():
                    break
                await trio.sleep(POLL)
            latency = gone[name] = trio.current_time() - created
            self.say(f"{self.stamp()}  #{seg.number} gone from {name}'s /files listing "
                     f"after {ms(latency)} ms")

    # ---- the summary ----

    def summary(self) -> str:
        r = self.result
        mib = sum(w.size for w in r.written) / 2**20
        head = "interrupted" if r.interrupted else "summary"
        lines = [f"\n{head} after {r.seconds:.1f} s: {len(r.written)} segments "
                 f"({mib:.1f} MiB) written on {NODE_NAMES[DOWNLOADER]}, "
                 f"{r.delivered}/{r.expected_copies} copies delivered by push"]
        rows = [("peer", "copies", "p50 ms", "p99 ms", "max ms")]
        for peer, values in r.latencies.items():
            rows.append((peer, f"{len(values)}/{len(r.written)}", ms(percentile(values, 50)),
                         ms(percentile(values, 99)), ms(max(values, default=None))))
        every = r.all_latencies
        rows.append(("all", f"{r.delivered}/{r.expected_copies}", ms(percentile(every, 50)),
                     ms(percentile(every, 99)), ms(max(every, default=None))))
        for row in rows:
            lines.append(f"  {row[0]:<5}{row[1]:>9}{row[2]:>9}{row[3]:>9}{row[4]:>9}")
        if r.tombstoned is None:
            lines.append("  tombstone: not created")
        else:
            def per_node(values: dict[str, float | None]) -> str:
                return ", ".join(f"{k} {ms(v)}" for k, v in sorted(values.items()))
            reached = r.tombstone_latency
            gone = r.gone_latency
            lines.append(
                f"  tombstone on every node after "
                f"{ms(reached) + ' ms' if reached is not None else 'NEVER'} "
                f"({per_node(r.tombstone_reached)})")
            lines.append(
                f"  segment gone from every listing after "
                f"{ms(gone) + ' ms' if gone is not None else 'NEVER'} "
                f"({per_node(r.segment_gone)})")
        return "\n".join(lines)


async def demo_until_signalled(demo: Demo) -> DemoResult:
    """Run the demo; Ctrl-C or SIGTERM ends it early, cleanly."""
    async with trio.open_nursery() as nursery:
        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    demo.interrupt()
                    return

        nursery.start_soon(watch_signals)
        result = await demo.run()
        nursery.cancel_scope.cancel()
    return result


def exit_status(result: DemoResult) -> int:
    if result.interrupted:
        return 130
    ok = result.ok if result.summary_ok is None else result.summary_ok
    return 0 if ok else 1
