"""The `segsync` command line: run, backfill, and the operator's tools."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import trio

from ..config import Config, ConfigError, build_config, load_toml, make_root
from . import coverage_cli, tools

log = logging.getLogger("segsync")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", help="archive root directory (created if it does not exist)")
    p.add_argument("--listen", help="HOST:PORT to serve on (default 127.0.0.1:8200)")
    p.add_argument("--peer", action="append", dest="peers", metavar="URL",
                   help="peer base URL; repeat for several")
    p.add_argument("--peers-file",
                   help="node file: 'NAME URL' or 'URL' per line; re-read on change")
    p.add_argument("--node-database", metavar="CONNINFO",
                   help="wubloader's nodes database (PostgreSQL connection string), read "
                        "each backfill round; prefer --node-database-file for a password")
    p.add_argument("--node-database-file", metavar="FILE",
                   help="file holding the --node-database connection string")
    p.add_argument("--token-file", help="file holding the shared bearer token")
    p.add_argument("--protect-reads", action="store_true", default=None,
                   help="require the token on /files, /segments and /metrics too")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="allow clear text: a non-loopback listen address without a token "
                        "or TLS, http:// peers off this machine while holding a token")
    p.add_argument("--node-name", help="this node's name in logs and status; a peer of this "
                   "name in the node file or database is this node, and skipped")
    p.add_argument("--tls-cert", metavar="FILE",
                   help="serve HTTPS with this certificate (chain); re-read when it changes")
    p.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert")
    p.add_argument("--tls-ca", metavar="FILE",
                   help="CA certificate(s) trusted for https:// peers (default: system bundle)")
    p.add_argument("--tls-client-auth", action="store_true", default=None,
                   help="require peers to present a certificate from --tls-ca")
    p.add_argument("--recent-window", type=float, metavar="SECONDS",
                   help="backfill skips segments younger than this (default 120)")
    p.add_argument("--backfill-interval", type=float, metavar="SECONDS",
                   help="seconds between backfill rounds (default 60)")
    p.add_argument("--backfill-hours", type=int, metavar="HOURS",
                   help="how far back backfill compares (default 336)")
    p.add_argument("--extras", action="append", metavar="DIR[,DIR]",
                   help="extras directory under the root to replicate too (e.g. emotes, "
                        "media); repeat or comma-separate")
    p.add_argument("--max-concurrency", type=int, metavar="N",
                   help="parallel backfill downloads per node (default 5)")
    p.add_argument("--scrub-rate", type=float, metavar="MB/S",
                   help="MB/s the scrub re-hashes segments at (default 10)")
    p.add_argument("--scrub-interval", type=float, metavar="SECONDS",
                   help="seconds from the end of a full scrub pass to the next (default 86400)")
    p.add_argument("--max-upload-rate", type=float, metavar="MB/S",
                   help="most MB/s (10^6 bytes) this node sends, to all peers together "
                        "(default 0: no limit); live traffic goes first")
    p.add_argument("--max-download-rate", type=float, metavar="MB/S",
                   help="most MB/s this node receives, from all peers together "
                        "(default 0: no limit); live traffic goes first")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    p.add_argument("--log-format", choices=("text", "json"), help="log line format")
    p.add_argument("--config", help="TOML file with the same keys; flags override it; "
                   "its max-upload-rate and max-download-rate are re-read on change")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segsync", description="Keep video segment archives identical across nodes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent: watch, push, receive, serve, backfill")
    _add_run_args(run)

    bf = sub.add_parser("backfill", help="one full backfill round from peers, then exit")
    bf.add_argument("--root", required=True,
                    help="archive root directory (created if it does not exist)")
    bf.add_argument("--from", action="append", dest="peers", required=True, metavar="URL",
                    help="peer to pull from; repeat for several")
    bf.add_argument("--token-file")
    bf.add_argument("--backfill-hours", type=int, metavar="HOURS")
    bf.add_argument("--extras", action="append", metavar="DIR[,DIR]",
                    help="extras directories to pull too (e.g. emotes,media)")
    bf.add_argument("--max-concurrency", type=int, metavar="N")
    bf.add_argument("--recent-window", type=float, metavar="SECONDS")
    bf.add_argument("--max-download-rate", type=float, metavar="MB/S",
                    help="most MB/s (10^6 bytes) to receive, from all peers together")
    bf.add_argument("--log-level")
    bf.add_argument("--tls-ca", metavar="FILE",
                    help="CA certificate(s) trusted for https:// peers (default: system bundle)")
    bf.add_argument("--tls-cert", metavar="FILE",
                    help="client certificate, for peers that require one")
    bf.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert")
    bf.add_argument("--insecure", action="store_true", default=None,
                    help="allow http:// peers off this machine while holding a token")
    bf.add_argument("--json", action="store_true",
                    help="print the summary as JSON (for scripts) instead of a table")

    tools.register(sub)
    coverage_cli.register(sub)
    return parser


def config_from_args(args: argparse.Namespace, missing_root_ok: bool = False) -> Config:
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_toml(Path(args.config)))
        values["config_file"] = Path(args.config)
    for key, value in vars(args).items():
        if key in ("command", "config", "func") or value is None:
            continue
        values[key] = value
    values["fixed_limits"] = frozenset(  # a flag wins over the file, re-read or not
        direction for direction in ("upload", "download")
        if getattr(args, f"max_{direction}_rate", None) is not None)
    return build_config(values, missing_root_ok)


def cmd_run(args: argparse.Namespace) -> int:
    from ..node import run_until_signalled
    from ..telemetry.logs import setup_logging

    cfg = config_from_args(args, missing_root_ok=True)
    setup_logging(cfg.log_level, cfg.log_format)
    if make_root(cfg.root):
        log.info("created the archive root %s (it did not exist)", cfg.root)
    trio.run(run_until_signalled, cfg)
    log.info("stopped")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from ..telemetry.logs import setup_logging
    from .oneshot import run_oneshot

    values = {k: v for k, v in vars(args).items()
              if k not in ("command", "func") and v is not None}
    values["backfill"] = False
    as_json = values.pop("json", False)
    cfg = build_config(values, missing_root_ok=True)
    setup_logging(cfg.log_level, "text")
    if make_root(cfg.root):
        print(f"segsync backfill: created the archive root {cfg.root}", file=sys.stderr)
    return trio.run(run_oneshot, cfg, None, None, as_json)


COMMANDS = {"run": cmd_run, "backfill": cmd_backfill}


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    # what start-up made (modules, classes, the parser) lives as long as the process:
    # the collector's full passes need not walk it again (a catch-up of 600 segments
    # spent 0.1-0.2 s less user CPU, bench/backfill_throughput.py)
    gc.freeze()
    handler = COMMANDS.get(args.command) or getattr(args, "func", None)
    try:
        return handler(args)
    except ConfigError as e:
        print(f"segsync {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
