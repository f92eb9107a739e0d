"""`segsync scrub`: one full scrub pass over an archive, with a progress bar and a
summary; rotten segments are quarantined and fetched again from `--from` peers.
Exit status 1 if anything rotten was not healed."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from typing import TextIO

import trio
from tqdm import tqdm

from .cli import EXTRA_COMMANDS
from .config import Config, build_config
from .scrub import Progress, ScrubReport


class BarProgress(Progress):
    """Files (count, rate, ETA) and bytes (amount, rate) on a terminal; silent elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        isatty = getattr(stream, "isatty", None)
        self.enabled = bool(isatty and isatty())
        self.bytes_done = 0
        self.started = time.monotonic()
        self.bar = tqdm(total=0, unit="seg", desc="scrub", file=stream, dynamic_ncols=True,
                        disable=not self.enabled)

    def planned(self, files: int) -> None:
        self.bar.total = files
        self.bar.refresh()

    def checked(self, nbytes: int) -> None:
        self.bytes_done += nbytes
        elapsed = time.monotonic() - self.started
        rate = self.bytes_done / elapsed if elapsed > 0 else 0.0
        self.bar.set_postfix_str(
            f"{self.bytes_done / 2**20:.1f} MiB, {rate / 2**20:.1f} MiB/s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def print_summary(report: ScrubReport, elapsed: float, out: TextIO) -> None:
    rate = report.bytes / 2**20 / elapsed if elapsed > 0 else 0.0
    print(f"checked {report.files} files, {report.bytes / 2**20:.1f} MiB in {elapsed:.1f}s "
          f"({rate:.1f} MiB/s): rotten {report.rotten}, healed {report.healed}, "
          f"lost {report.lost}", file=out)
    for path in report.quarantined:
        print(f"  quarantined: {path}", file=out)
    for path in report.lost_paths:
        print(f"  LOST (no peer had a good copy): {path}", file=out)


async def run_scrub(cfg: Config, rate: float | None, out: TextIO | None = None,
                    err: TextIO | None = None) -> int:
    """One full pass over `cfg.root`, healing from `cfg.peers`; 0 if nothing is left
    rotten."""
    from .node import Node

    out = out or sys.stdout
    err = err or sys.stderr
    node = Node(cfg)
    node.scrubber.persist = False  # a running agent's resume point is not ours to move
    await node.rescan(push_new=False)
    progress = BarProgress(err)
    started = trio.current_time()
    try:
        redirect_logs = nullcontext()
        if progress.enabled:
            from tqdm.contrib.logging import logging_redirect_tqdm
            redirect_logs = logging_redirect_tqdm()
        with redirect_logs:
            report = await node.scrubber.run_pass(rate, progress)
    finally:
        progress.close()
    print_summary(report, trio.current_time() - started, out)
    return 1 if report.unhealed else 0


def cmd_scrub(args: argparse.Namespace) -> int:
    from .logs import setup_logging

    values = {"root": args.root, "peers": args.peers or [], "backfill": False, "scrub": False}
    for key in ("token_file", "log_level"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    cfg = build_config(values)
    setup_logging(cfg.log_level, "text")
    if args.rate is not None and args.rate <= 0:
        print("segsync scrub: --rate must be > 0", file=sys.stderr)
        return 2
    rate = args.rate * 1e6 if args.rate is not None else None
    return trio.run(run_scrub, cfg, rate)


def register(sub) -> None:
    p = sub.add_parser("scrub", help="re-hash every segment now; quarantine and heal rot")
    p.add_argument("--root", required=True, help="archive root directory")
    p.add_argument("--from", action="append", dest="peers", metavar="URL",
                   help="peer to fetch good copies from; repeat for several")
    p.add_argument("--token-file")
    p.add_argument("--rate", type=float, metavar="MB/S",
                   help="limit the re-hashing to this many MB/s (default: full speed)")
    p.add_argument("--log-level")
    p.set_defaults(func=cmd_scrub)


EXTRA_COMMANDS.append(register)
