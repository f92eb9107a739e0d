"""`segsync backfill`: one full round from the given peers, with a progress bar, then exit.

This is how a new node bootstraps. Exit status is non-zero if anything failed.
"""

from __future__ import annotations

import sys

import trio
from tqdm import tqdm

from .backfill import Progress
from .config import Config
from .node import Node


class BarProgress(Progress):
    """Segments and bytes, with rate and ETA, on a terminal."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.bar: tqdm | None = None
        self.segments_total = 0
        self.segments_done = 0

    def planned(self, segments: int, nbytes: int | None) -> None:
        self.segments_total += segments
        if self.bar is None:
            self.bar = tqdm(total=self.segments_total, unit="seg", file=self.stream,
                            dynamic_ncols=True, disable=not self.stream.isatty())
        else:
            self.bar.total = self.segments_total
        self.bar.refresh()

    def fetched(self, nbytes: int) -> None:
        self.segments_done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bytes = getattr(self, "bytes", 0) + nbytes
            self.bar.set_postfix_str(f"{self.bytes / 2**20:.1f} MiB", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def run_oneshot(cfg: Config, out=None) -> int:
    out = out or sys.stdout
    node = Node(cfg)
    await node.rescan(push_new=False, remove_temp=True)
    progress = BarProgress(sys.stderr)
    started = trio.current_time()
    try:
        results = await node.backfiller.round_all(node.peer_urls(), progress)
    finally:
        progress.close()
    elapsed = trio.current_time() - started
    failed = 0
    print(f"{'peer':40} {'result':8} {'missing':>8} {'fetched':>8} {'tombst':>7} "
          f"{'recent':>7} {'mismatch':>8} {'failed':>7} {'MiB':>9}", file=out)
    for r in results:
        failed += r.failures
        print(f"{r.peer:40} {'ok' if r.ok else 'FAILED':8} {r.total('missing'):8d} "
              f"{r.total('downloaded'):8d} {r.total('tombstones'):7d} "
              f"{r.total('skipped_recent'):7d} {r.total('hash_mismatch'):8d} "
              f"{r.total('failed'):7d} {r.total('bytes') / 2**20:9.1f}", file=out)
        if r.error:
            print(f"  error: {r.error}", file=out)
    total = sum(r.total("bytes") for r in results)
    print(f"done in {elapsed:.1f}s, {total / 2**20:.1f} MiB, "
          f"{total / 2**20 / elapsed if elapsed > 0 else 0:.1f} MiB/s; "
          f"{'FAILURES: ' + str(failed) if failed else 'no failures'}", file=out)
    return 1 if failed else 0
