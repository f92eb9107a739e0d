"""The operator's sub-commands (status, tombstone, purge, dupes, demo, and scrub from
`scrub_cli`): `register` adds them to the `segsync` parser. Each handler runs and
returns the exit status."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from protocol.errors import SegmentNameError

from ..config import ConfigError, read_token_file
from ..peers.client import PeerError
from ..peers.peer_set import normalize_peer_url
from . import scrub_cli
from .client_options import add_client_tls_args, client_tls
from .status_view import DEFAULT_NODE


def _token(args: argparse.Namespace) -> str | None:
    return read_token_file(Path(args.token_file)) if args.token_file else None


def _node_url(args: argparse.Namespace) -> str:
    try:
        return normalize_peer_url(args.node)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _root(value: str) -> Path:
    root = Path(value)
    if not root.is_dir():
        raise ConfigError(f"root {root} is not a directory")
    return root


def cmd_status(args: argparse.Namespace) -> int:
    from .status_view import fetch_status, render_status, status_json

    url, token, tls = _node_url(args), _token(args), client_tls(args)
    try:
        status = trio.run(fetch_status, url, token, args.timeout, tls)
    except PeerError as e:
        print(f"segsync status: cannot reach node {e}", file=sys.stderr)
        return 1
    sys.stdout.write(status_json(status) if args.json else render_status(status))
    return 0


def cmd_tombstone(args: argparse.Namespace) -> int:
    from .cleanup import tombstone_paths

    return tombstone_paths(args.paths, sys.stdout, sys.stderr, missing_ok=args.missing_ok)


def cmd_purge(args: argparse.Namespace) -> int:
    from .cleanup import purge

    root, url, token, tls = _root(args.root), _node_url(args), _token(args), client_tls(args)
    try:
        return trio.run(purge, root, url, token, args.dry_run, sys.stdout, tls)
    except PeerError as e:
        print(f"segsync purge: cannot reach node {e}; nothing deleted", file=sys.stderr)
        return 1


def cmd_dupes(args: argparse.Namespace) -> int:
    from .cleanup import dupes

    root = _root(args.root)
    try:
        return dupes(root, args.channel, args.quality, args.hour, args.tombstone_losers,
                     sys.stdout)
    except SegmentNameError as e:
        print(f"segsync dupes: {e}", file=sys.stderr)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    from ..telemetry.logs import setup_logging
    from .demo import Demo, demo_until_signalled, exit_status

    if args.seconds <= 0 or args.rate <= 0:
        raise ConfigError("--seconds and --rate must be > 0")
    setup_logging(args.log_level, "text")
    result = trio.run(demo_until_signalled,
                      Demo(args.seconds, args.rate, keep_running=args.keep_running))
    return exit_status(result)


def register(sub) -> None:
    p = sub.add_parser("status", help="show a running agent's peers, pushes and backfill rounds")
    p.add_argument("--node", default=DEFAULT_NODE, metavar="URL",
                   help=f"the agent to ask (default {DEFAULT_NODE})")
    p.add_argument("--token-file", help="file holding the shared bearer token")
    p.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true",
                   help="print the node's reply as JSON (for scripts), nothing shortened")
    add_client_tls_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("tombstone", help="tombstone segments (the running agent propagates it)")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="segment file: ROOT/CHANNEL/QUALITY/HOUR/NAME.ts")
    p.add_argument("--missing-ok", action="store_true",
                   help="tombstone even if this node does not hold the segment")
    p.set_defaults(func=cmd_tombstone)

    p = sub.add_parser(
        "purge", help="delete tombstoned segments' .ts files once every peer holds the tombstone")
    p.add_argument("--root", required=True, help="archive root directory")
    p.add_argument("--node", default=DEFAULT_NODE, metavar="URL",
                   help=f"the agent serving this root, for its peer list (default {DEFAULT_NODE})")
    p.add_argument("--token-file", help="file holding the shared bearer token")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be deleted, delete nothing")
    add_client_tls_args(p)
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("dupes", help="segments with several versions: which one wins, and why")
    p.add_argument("--root", required=True, help="archive root directory")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("quality", metavar="QUALITY")
    p.add_argument("--hour", required=True, metavar="HOUR", help="YYYY-MM-DDTHH (UTC)")
    p.add_argument("--tombstone-losers", action="store_true",
                   help="tombstone every version the selection rule does not keep")
    p.set_defaults(func=cmd_dupes)

    p = sub.add_parser("demo", help="three local agents: watch segments and a tombstone replicate")
    p.add_argument("--seconds", type=float, default=20.0, help="how long the downloader runs")
    p.add_argument("--rate", type=float, default=4.0, help="segments written per second")
    p.add_argument("--keep-running", action="store_true",
                   help="after the summary, keep the agents up (a segment every 2 s, a "
                        "tombstone now and then) to watch a dashboard; Ctrl-C stops")
    p.add_argument("--log-level", default="WARNING", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="the agents' log level")
    p.set_defaults(func=cmd_demo)

    scrub_cli.register(sub)
    from . import tls_init
    tls_init.register(sub)

