"""`segsync scrub`: one full scrub pass over an archive, with a progress bar and a
summary; rotten segments are quarantined and fetched again from `--from` peers.
Exit status 1 if anything rotten was not healed."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

import trio

from ..config import Config, build_config

if TYPE_CHECKING:
    from ..archive.scrub import ScrubReport


def print_summary(report: ScrubReport, elapsed: float, out: TextIO) -> None:
    rate = report.bytes / 2**20 / elapsed if elapsed > 0 else 0.0
    print(f"checked {report.files} files, {report.bytes / 2**20:.1f} MiB in {elapsed:.1f}s "
          f"({rate:.1f} MiB/s): rotten {report.rotten}, healed {report.healed}, "
          f"lost {report.lost}", file=out)
    if report.retried:
        print(f"lost segments from before (in quarantine) asked for again: {report.retried}, "
              f"healed {report.recovered}", file=out)
    for path in report.quarantined:
        print(f"  quarantined: {path}", file=out)
    for path in report.lost_paths:
        print(f"  LOST (no peer had a good copy): {path}", file=out)


async def run_scrub(cfg: Config, rate: float | None, out: TextIO | None = None,
                    err: TextIO | None = None) -> int:
    """One full pass over `cfg.root`, healing from `cfg.peers` (the lost segments in
    its quarantine first); 0 if nothing is left rotten or lost. Builds only the parts a
    pass uses: store, index, metrics, ingest (the healed copies come in through it),
    the peers, their kinds and clients, the scrubber."""
    from ..archive.scrub import Scrubber, ScrubSettings
    from ..peers.client import ClientFactory
    from ..peers.kinds import PeerKinds
    from ..pull.heal import PeerHealer
    from .oneshot import OfflineArchive, progress_bar

    out = out or sys.stdout
    err = err or sys.stderr
    a = await OfflineArchive.open(cfg)
    clients = ClientFactory.from_config(cfg)
    healer = PeerHealer(a.peers, clients, PeerKinds.probing_with(a.peers, clients), a.ingest,
                        cfg.max_segment_bytes)
    # a running agent's resume point is not ours to move: persist=False
    scrubber = Scrubber(a.store, a.index, a.metrics, healer, ScrubSettings(rate, 0.0, 0.0),
                        persist=False)
    started = trio.current_time()
    with progress_bar(err, "scrub") as progress:
        report = await scrubber.run_pass(rate, progress)
    print_summary(report, trio.current_time() - started, out)
    return 1 if report.unhealed else 0


def cmd_scrub(args: argparse.Namespace) -> int:
    from ..telemetry.logs import setup_logging

    values = {"root": args.root, "peers": args.peers or [], "backfill": False, "scrub": False}
    for key in ("token_file", "log_level", "tls_ca", "tls_cert", "tls_key", "insecure"):
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
    from .client_options import add_client_tls_args
    add_client_tls_args(p)
    p.add_argument("--insecure", action="store_true", default=None,
                   help="allow http:// peers off this machine while holding a token")
    p.set_defaults(func=cmd_scrub)
