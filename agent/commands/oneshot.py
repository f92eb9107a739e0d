"""`segsync backfill`: one full round from the given peers, with a progress bar, then exit.

This is how a new node bootstraps. Exit status is non-zero if anything failed.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Iterator, TextIO

import trio
from tqdm import tqdm

from ..archive.filesets.archive import FileSetArchive
from ..archive.index import ArchiveIndex
from ..archive.ingest import Ingest
from ..archive.local_files import LocalFiles
from ..archive.store import Store
from ..config import Config
from ..peers.bandwidth import Bandwidth
from ..peers.client import ClientFactory
from ..peers.kinds import PeerKinds
from ..peers.peer_set import Peer, PeerSet
from ..pull.backfill import Backfiller, BackfillSettings
from ..pull.downloads import Downloads
from ..pull.fileset_puller import FileSetPuller
from ..pull.round_stats import PairStats, RoundResult
from ..telemetry.metrics import Metrics
from ..telemetry.progress import Progress
from .tables import Column, layout, shorten_url, wrap


class BarProgress(Progress):
    """Segments (count, rate, ETA) and bytes (amount, rate) on a terminal; silent elsewhere."""

    def __init__(self, stream: TextIO, enabled: bool | None = None,
                 desc: str = "backfill") -> None:
        if enabled is None:
            isatty = getattr(stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.segments_total = 0
        self.segments_done = 0
        self.bytes_done = 0
        self.started = time.monotonic()
        self.bar = tqdm(total=0, unit="seg", desc=desc, file=stream,
                        dynamic_ncols=True, disable=not enabled)

    def planned(self, segments: int, nbytes: int | None) -> None:
        self.segments_total += segments
        self.bar.total = self.segments_total
        self.bar.refresh()

    def fetched(self, nbytes: int) -> None:
        self.segments_done += 1
        self.bytes_done += nbytes
        elapsed = time.monotonic() - self.started
        rate = self.bytes_done / elapsed if elapsed > 0 else 0.0
        self.bar.set_postfix_str(
            f"{self.bytes_done / 2**20:.1f} MiB, {rate / 2**20:.1f} MiB/s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@contextmanager
def progress_bar(stream: TextIO, desc: str) -> Iterator[BarProgress]:
    """A bar on `stream` for the duration, log lines going above it instead of through
    it (on a terminal; silent elsewhere)."""
    progress = BarProgress(stream, desc=desc)
    try:
        redirect_logs = nullcontext()
        if progress.enabled:
            # imported only for a terminal: it pulls in asyncio (20 ms of start-up)
            from tqdm.contrib.logging import logging_redirect_tqdm
            redirect_logs = logging_redirect_tqdm()
        with redirect_logs:
            yield progress
    finally:
        progress.close()


SUMMARY_COUNTS = [  # (heading, RoundResult total), the ones read first first
    ("missing", "missing"), ("fetched", "downloaded"), ("MiB", "bytes"), ("failed", "failed"),
    ("mismatch", "hash_mismatch"), ("hours", "hours_listed"), ("tombs", "tombstones"),
    ("recent", "skipped_recent"), ("temp", "skipped_temp"), ("hidden", "skipped_tombstoned"),
]
SUMMARY_COLUMNS = [Column("peer", max_width=36, shorten=shorten_url), Column("result"),
                   *(Column(heading, right=True) for heading, _ in SUMMARY_COUNTS)]


def _count(r: RoundResult, attr: str) -> str:
    return f"{r.total(attr) / 2**20:.1f}" if attr == "bytes" else str(r.total(attr))


def summary_lines(results: list[RoundResult], elapsed: float) -> list[str]:
    """One row per peer (its error below it), then the totals: at most 100 columns, a
    row too wide continuing on an indented line."""
    rows = [[r.peer, "ok" if r.ok else "FAILED", *(_count(r, attr) for _, attr in SUMMARY_COUNTS)]
            for r in results]
    table = layout(SUMMARY_COLUMNS, rows)
    per_row = len(table) // (len(rows) + 1)
    lines = table[:per_row]
    for i, r in enumerate(results):
        lines.extend(table[per_row * (i + 1): per_row * (i + 2)])
        if r.error:
            lines.extend(wrap(f"error: {r.error}", indent="  "))
    failed = sum(r.failures for r in results)
    total = sum(r.total("bytes") for r in results)
    segments = sum(r.total("downloaded") for r in results)
    rate = total / 2**20 / elapsed if elapsed > 0 else 0.0
    files = [r.files for r in results if r.files is not None]
    if files:
        lines.extend(wrap(
            f"chat and extras: {sum(f.fetched for f in files)} files "
            f"({sum(f.bytes for f in files) / 2**20:.1f} MiB), "
            f"{sum(f.tombstones for f in files)} chat tombstones, "
            f"{sum(f.gone for f in files)} gone before their download, "
            f"{sum(f.refused for f in files)} refused paths, "
            f"{sum(f.failed for f in files)} failed"))
    lines.extend(wrap(
        f"done in {elapsed:.1f}s: {segments} segments, {total / 2**20:.1f} MiB, "
        f"{rate:.1f} MiB/s; {'FAILURES: ' + str(failed) if failed else 'no failures'}"))
    return lines


def summary_json(results: list[RoundResult], elapsed: float) -> dict:
    """The summary for scripts (`--json`): nothing shortened, every count of every
    (channel, quality) of every peer."""
    counts = [f.name for f in fields(PairStats) if f.type in ("int", int)]
    return {
        "elapsed": elapsed,
        "segments": sum(r.total("downloaded") for r in results),
        "bytes": sum(r.total("bytes") for r in results),
        "failures": sum(r.failures for r in results),
        "peers": [{
            "url": r.peer, "name": r.name, "ok": r.ok, "error": r.error,
            "pairs_compared": r.pairs_compared, "duration": r.duration,
            "totals": {attr: r.total(attr) for attr in counts},
            "pairs": [{"channel": c, "quality": q, **asdict(stats)}
                      for (c, q), stats in sorted(r.pairs.items())],
            "files": asdict(r.files) if r.files is not None else None,  # chat and extras
        } for r in results],
    }


def print_summary(results: list[RoundResult], elapsed: float, out: TextIO,
                  as_json: bool = False) -> int:
    """The summary table (or JSON); returns the number of failures."""
    if as_json:
        json.dump(summary_json(results, elapsed), out, indent=2)
        out.write("\n")
    else:
        out.write("\n".join(summary_lines(results, elapsed)) + "\n")
    return sum(r.failures for r in results)


@dataclass
class OfflineArchive:
    """What a one-shot command works on: an archive (an agent may be running on it),
    its index, and the peers it was given. No agent part runs."""

    store: Store
    index: ArchiveIndex
    metrics: Metrics
    ingest: Ingest
    peers: PeerSet
    files: FileSetArchive  # chat batches and extras directories

    @classmethod
    async def open(cls, cfg: Config) -> "OfflineArchive":
        """Build the parts and index the archive. Temp files are left alone: an agent
        may be writing into this root right now."""
        store = Store(cfg.root, cfg.max_segment_bytes, not_segments=cfg.extras)
        index, metrics = ArchiveIndex(), Metrics()
        ingest = Ingest(store, index, metrics)
        peers = PeerSet((Peer.from_url(url) for url in cfg.peers), kinds=cfg.peer_kinds)
        await LocalFiles(store, index, ingest, metrics, announce=lambda *_: None,
                         rescan_interval=cfg.rescan_interval).rescan(announce_new=False)
        files = FileSetArchive(cfg.root, cfg.extras, metrics.registry, cfg.max_segment_bytes)
        await files.local.rescan(announce_new=False)
        return cls(store, index, metrics, ingest, peers, files)


async def run_oneshot(cfg: Config, out: TextIO | None = None,
                      err: TextIO | None = None, as_json: bool = False) -> int:
    """One round with every configured peer into `cfg.root`; 0 if nothing failed.
    `as_json`: the summary as JSON."""
    out = out or sys.stdout
    err = err or sys.stderr
    a = await OfflineArchive.open(cfg)
    peers, clients = a.peers, ClientFactory.from_config(cfg, bandwidth=Bandwidth.from_config(cfg))
    backfiller = Backfiller(
        peers, clients, a.index, a.ingest,
        Downloads(a.ingest, a.store, a.index, a.metrics, cfg.max_concurrency,
                  cfg.max_segment_bytes),
        a.metrics, BackfillSettings.from_config(cfg),
        kinds=PeerKinds.probing_with(peers, clients),
        files=FileSetPuller(a.files.index, a.files.ingest, a.files.metrics, cfg.extras,
                            cfg.max_concurrency))
    started = trio.current_time()
    with progress_bar(err, "backfill") as progress:
        results = await backfiller.round_all(peers.peers, progress)
    failed = print_summary(results, trio.current_time() - started, out, as_json)
    return 1 if failed or len(results) < len(peers) else 0
